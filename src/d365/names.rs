//! Every OData entity-set, field and enum-symbol name the connector relies on, in one place.
//!
//! Names come from Microsoft's CDM schemas of the F&O entities
//! (<https://github.com/MicrosoftDocs/common-data-model-and-service>,
//! `common-data-model/schema/core/operationsCommon/Entities/Finance/`). Where a name is not confirmed by a schema it is
//! marked `UNCERTAIN` so it can be checked against an environment's `/data/$metadata` and changed
//! here only. The sandbox simulator uses the same constants, so a change here moves both.

/// Query option that makes F&O return rows of every company, not only the user's default one.
pub const CROSS_COMPANY: &str = "cross-company";
/// Company field on company-specific entities (returned lower case by F&O).
pub const DATA_AREA_ID: &str = "dataAreaId";

/// `NoYes` enum symbols.
pub const YES: &str = "Yes";
pub const NO: &str = "No";

/// `Ledgers` (LedgerEntity): chart of accounts, calendar and currency of a legal entity.
pub mod ledger {
    pub const SET: &str = "Ledgers";
    pub const NAME: &str = "Name";
    pub const LEGAL_ENTITY: &str = "LegalEntityId";
    pub const CHART_OF_ACCOUNTS: &str = "ChartOfAccounts";
    pub const FISCAL_CALENDAR: &str = "FiscalCalendar";
    pub const ACCOUNTING_CURRENCY: &str = "AccountingCurrency";
    pub const DESCRIPTION: &str = "Description";
}

/// `MainAccounts` (MainAccountEntity): shared per chart of accounts.
pub mod main_account {
    pub const SET: &str = "MainAccounts";
    pub const ID: &str = "MainAccountId";
    pub const NAME: &str = "Name";
    pub const CHART_OF_ACCOUNTS: &str = "ChartOfAccounts";
    pub const TYPE: &str = "MainAccountType";
    pub const IS_SUSPENDED: &str = "IsSuspended";
    pub const DO_NOT_ALLOW_MANUAL_ENTRY: &str = "DoNotAllowManualEntry";
    pub const ACTIVE_FROM: &str = "ActiveFrom";
    pub const ACTIVE_TO: &str = "ActiveTo";
}

/// `FinancialDimensionValues` (FinancialDimensionValueEntity). `LegalEntityId` is empty for
/// values shared by all companies.
pub mod dimension_value {
    pub const SET: &str = "FinancialDimensionValues";
    pub const DIMENSION: &str = "FinancialDimension";
    pub const VALUE: &str = "DimensionValue";
    pub const LEGAL_ENTITY: &str = "LegalEntityId";
    pub const DESCRIPTION: &str = "Description";
    pub const IS_SUSPENDED: &str = "IsSuspended";
    pub const IS_BLOCKED_FOR_MANUAL_ENTRY: &str = "IsBlockedForManualEntry";
    pub const IS_TOTAL: &str = "IsTotal";
    pub const ACTIVE_FROM: &str = "ActiveFrom";
    pub const ACTIVE_TO: &str = "ActiveTo";
}

/// `DimensionIntegrationFormats` (DimensionIntegrationFormatEntity): the global "Financial
/// dimension configuration for integrating applications".
pub mod dimension_format {
    pub const SET: &str = "DimensionIntegrationFormats";
    pub const NAME: &str = "DimensionFormatName";
    pub const TYPE: &str = "DimensionFormatType";
    pub const IS_ACTIVE: &str = "IsActive";
    pub const FORMAT: &str = "FinancialDimensionFormat";
    /// Enum symbol of the ledger-account format type.
    pub const TYPE_LEDGER: &str = "DataEntityLedgerDimensionFormat";
    /// The first segment of every ledger format.
    pub const MAIN_ACCOUNT_SEGMENT: &str = "MainAccount";
}

/// `DimensionParameters` (DimensionParametersEntity): one row, holds the segment delimiter.
pub mod dimension_parameters {
    pub const SET: &str = "DimensionParameters";
    pub const DELIMITER: &str = "DimensionSegmentDelimiter";
    /// Used when the parameter row or field is missing (F&O's default).
    pub const DEFAULT_DELIMITER: char = '-';
}

/// `JournalNames` (LedgerJournalNameEntity). Key is `Name` (not `JournalName`).
pub mod journal_name {
    pub const SET: &str = "JournalNames";
    pub const NAME: &str = "Name";
    pub const DESCRIPTION: &str = "Description";
    pub const TYPE: &str = "Type";
    pub const NEW_VOUCHER: &str = "NewVoucher";
    pub const VOUCHER_SERIES: &str = "VoucherSeries";
    pub const IS_WORKFLOW_APPROVAL_ACTIVE: &str = "IsWorkflowApprovalActive";
    pub const POSTING_LAYER: &str = "PostingLayer";
    /// X++ `NewVoucher` enum symbols (confirmed): "In connection with balance" is
    /// `BalanceSheet`, "Manual" is `Manually`, "One voucher number only" is `OneVoucher`. The
    /// simulator sends the first of each list; anything else is refused by name.
    pub const NEW_VOUCHER_BALANCE: &[&str] = &["BalanceSheet"];
    pub const NEW_VOUCHER_ONE: &[&str] = &["OneVoucher"];
    pub const NEW_VOUCHER_MANUAL: &[&str] = &["Manually"];
}

/// `FiscalPeriods` (FiscalPeriodEntity): period dates of a fiscal calendar.
pub mod fiscal_period {
    pub const SET: &str = "FiscalPeriods";
    pub const CALENDAR: &str = "Calendar";
    pub const YEAR: &str = "FiscalYear";
    pub const NAME: &str = "PeriodName";
    pub const START: &str = "StartDate";
    pub const END: &str = "EndDate";
    pub const TYPE: &str = "Type";
    /// `FiscalPeriodType` symbol of ordinary periods (others: `Opening`, `Closing`).
    pub const TYPE_OPERATING: &str = "Operating";
}

/// `LedgerFiscalPeriodsV2` (LedgerFiscalPeriodEntity): period status per ledger, no dates.
pub mod ledger_period {
    pub const SET: &str = "LedgerFiscalPeriodsV2";
    pub const LEGAL_ENTITY: &str = "LegalEntityId";
    pub const LEDGER_NAME: &str = "LedgerName";
    pub const CALENDAR: &str = "Calendar";
    pub const YEAR: &str = "YearName";
    pub const PERIOD: &str = "PeriodName";
    pub const STATUS: &str = "PeriodStatus";
    /// X++ `FiscalPeriodStatus` enum symbols: `OnHold` (0), `Open` (1), `Closed` (2). The
    /// simulator sends the first of each list; any other value is refused by name.
    pub const STATUS_OPEN: &[&str] = &["Open"];
    pub const STATUS_ON_HOLD: &[&str] = &["OnHold"];
    pub const STATUS_CLOSED: &[&str] = &["Closed"];
}

/// `LedgerJournalHeaders` (LedgerJournalHeaderEntity). Key: dataAreaId + JournalBatchNumber.
pub mod header {
    pub const SET: &str = "LedgerJournalHeaders";
    /// Entity type name F&O uses in Infolog messages.
    pub const ENTITY_TYPE: &str = "LedgerJournalHeaderEntity";
    pub const BATCH_NUMBER: &str = "JournalBatchNumber";
    pub const JOURNAL_NAME: &str = "JournalName";
    pub const DESCRIPTION: &str = "Description";
    pub const IS_POSTED: &str = "IsPosted";
    pub const POSTING_LAYER: &str = "PostingLayer";
    pub const TOTAL_DEBIT: &str = "JournalTotalDebit";
    pub const TOTAL_CREDIT: &str = "JournalTotalCredit";
}

/// `LedgerJournalLines` (LedgerJournalLineEntity). Key: dataAreaId + JournalBatchNumber + LineNumber.
pub mod line {
    pub const SET: &str = "LedgerJournalLines";
    pub const ENTITY_TYPE: &str = "LedgerJournalLineEntity";
    pub const BATCH_NUMBER: &str = "JournalBatchNumber";
    pub const LINE_NUMBER: &str = "LineNumber";
    pub const VOUCHER: &str = "Voucher";
    pub const TRANS_DATE: &str = "TransDate";
    pub const ACCOUNT_TYPE: &str = "AccountType";
    pub const ACCOUNT: &str = "AccountDisplayValue";
    pub const OFFSET_ACCOUNT_TYPE: &str = "OffsetAccountType";
    pub const OFFSET_ACCOUNT: &str = "OffsetAccountDisplayValue";
    pub const DEBIT: &str = "DebitAmount";
    pub const CREDIT: &str = "CreditAmount";
    pub const CURRENCY: &str = "CurrencyCode";
    pub const TEXT: &str = "Text";
    /// `LedgerJournalACType` symbol for ledger accounts.
    pub const ACCOUNT_TYPE_LEDGER: &str = "Ledger";
}
