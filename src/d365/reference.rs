//! Reads the master data validation needs for one legal entity into a [`ReferenceData`]
//! snapshot: ledger, chart of accounts, dimension values, the active ledger dimension format,
//! journal names and fiscal periods with their status.
//!
//! Enum-typed filters are avoided where the enum's type name is not certain (format type,
//! period type): those small sets are read whole and filtered here.

use std::collections::BTreeMap;

use crate::domain::reference::{
    DimensionFormat, DimensionValue, FiscalPeriod, JournalName, Ledger, MainAccount, PeriodStatus,
    ReferenceData, VoucherAllocation,
};

use super::names::{
    self, dimension_format as df, dimension_parameters as dp, dimension_value as dv,
    fiscal_period as fp, journal_name as jn, ledger as lg, ledger_period as lp, main_account as ma,
};
use super::odata::{quote, Row};
use super::{D365Client, D365Error};

fn one_of(s: &str, symbols: &[&str]) -> bool {
    symbols.iter().any(|x| x.eq_ignore_ascii_case(s.trim()))
}

/// `NewVoucher` symbol → allocation.
pub(crate) fn voucher_allocation(s: &str) -> Option<VoucherAllocation> {
    if one_of(s, jn::NEW_VOUCHER_BALANCE) {
        Some(VoucherAllocation::InConnectionWithBalance)
    } else if one_of(s, jn::NEW_VOUCHER_ONE) {
        Some(VoucherAllocation::OneVoucherNumberOnly)
    } else if one_of(s, jn::NEW_VOUCHER_MANUAL) {
        Some(VoucherAllocation::Manual)
    } else {
        None
    }
}

/// `PeriodStatus` symbol → status.
pub(crate) fn period_status(s: &str) -> Option<PeriodStatus> {
    if one_of(s, lp::STATUS_OPEN) {
        Some(PeriodStatus::Open)
    } else if one_of(s, lp::STATUS_ON_HOLD) {
        Some(PeriodStatus::OnHold)
    } else if one_of(s, lp::STATUS_CLOSED) {
        Some(PeriodStatus::Closed)
    } else {
        None
    }
}

/// Splits `MainAccount-Department-CostCenter` into segment names.
pub(crate) fn parse_format(
    name: &str,
    format: &str,
    delimiter: char,
) -> Result<DimensionFormat, D365Error> {
    let segments: Vec<String> = format
        .split(delimiter)
        .map(|s| s.trim().to_string())
        .collect();
    if segments.iter().any(String::is_empty) {
        return Err(D365Error::Setup(format!(
            "the active ledger dimension format `{format}` has an empty segment (delimiter `{delimiter}`)"
        )));
    }
    if segments.first().map(String::as_str) != Some(df::MAIN_ACCOUNT_SEGMENT) {
        return Err(D365Error::Setup(format!(
            "the active ledger dimension format `{format}` must start with {}",
            df::MAIN_ACCOUNT_SEGMENT
        )));
    }
    Ok(DimensionFormat {
        name: name.to_string(),
        segments,
        delimiter,
    })
}

fn field_err(entity: &str, detail: String) -> D365Error {
    D365Error::Protocol {
        entity: entity.to_string(),
        detail,
    }
}

impl D365Client {
    /// Everything validation needs for `legal_entity` (dataAreaId, any case).
    pub async fn load_reference(&self, legal_entity: &str) -> Result<ReferenceData, D365Error> {
        let company = legal_entity.trim().to_ascii_lowercase();
        if company.is_empty() {
            return Err(D365Error::InvalidInput("legal entity is empty".into()));
        }
        let ledger = self.ledger(&company).await?;
        let (format, main_accounts, dimension_values, journal_names, periods) = tokio::try_join!(
            self.ledger_format(),
            self.main_accounts(&ledger.chart_of_accounts),
            self.dimension_values(&company),
            self.journal_names(&company),
            self.periods(&company, &ledger.fiscal_calendar),
        )?;
        Ok(ReferenceData {
            legal_entity: company,
            ledger,
            format,
            main_accounts,
            dimension_values,
            journal_names,
            periods,
        })
    }

    async fn ledger(&self, company: &str) -> Result<Ledger, D365Error> {
        let filter = format!("{} eq {}", lg::LEGAL_ENTITY, quote(company));
        let rows = self.odata.get_all(lg::SET, Some(filter), &[]).await?;
        let mut ledgers = Vec::new();
        for r in &rows {
            if !r.str(lg::LEGAL_ENTITY)?.eq_ignore_ascii_case(company) {
                continue;
            }
            ledgers.push(Ledger {
                legal_entity: company.to_string(),
                chart_of_accounts: r.str(lg::CHART_OF_ACCOUNTS)?,
                fiscal_calendar: r.str(lg::FISCAL_CALENDAR)?,
                accounting_currency: r.str(lg::ACCOUNTING_CURRENCY)?,
            });
        }
        match ledgers.len() {
            0 => Err(D365Error::Setup(format!(
                "no ledger found for legal entity `{company}` (check the company id / dataAreaId and that the connector's D365 user may read General ledger setup)"
            ))),
            1 => {
                let l = ledgers.remove(0);
                if l.chart_of_accounts.is_empty() || l.fiscal_calendar.is_empty() {
                    return Err(D365Error::Setup(format!(
                        "the ledger of `{company}` has no chart of accounts or fiscal calendar"
                    )));
                }
                Ok(l)
            }
            n => Err(field_err(
                lg::SET,
                format!("{n} ledgers found for legal entity `{company}`"),
            )),
        }
    }

    async fn ledger_format(&self) -> Result<DimensionFormat, D365Error> {
        let top = [("$top", "1".to_string())];
        let (formats, params) = tokio::try_join!(
            self.odata.get_all(df::SET, None, &[]),
            self.odata.get_all(dp::SET, None, &top),
        )?;
        let delimiter = params
            .first()
            .and_then(|r| r.opt_str(dp::DELIMITER))
            .and_then(|s| s.trim().chars().next())
            .unwrap_or(dp::DEFAULT_DELIMITER);
        let mut active = Vec::new();
        for r in &formats {
            if r.str(df::TYPE)?.eq_ignore_ascii_case(df::TYPE_LEDGER) && r.yes_no(df::IS_ACTIVE)? {
                active.push((r.str(df::NAME)?, r.str(df::FORMAT)?));
            }
        }
        match active.len() {
            0 => Err(D365Error::Setup(
                "no active ledger dimension format. In D365 go to General ledger > Chart of accounts > Dimensions > Financial dimension configuration for integrating applications, create a format of type 'Ledger dimension format' for data entities (MainAccount first, then the dimensions in the order the connector should send them) and activate it".into(),
            )),
            1 => {
                let (name, format) = active.remove(0);
                parse_format(&name, &format, delimiter)
            }
            n => Err(D365Error::Setup(format!(
                "{n} ledger dimension formats are active; D365 allows only one"
            ))),
        }
    }

    async fn main_accounts(&self, chart: &str) -> Result<BTreeMap<String, MainAccount>, D365Error> {
        let filter = format!("{} eq {}", ma::CHART_OF_ACCOUNTS, quote(chart));
        let rows = self.odata.get_all(ma::SET, Some(filter), &[]).await?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let a = MainAccount {
                id: r.str(ma::ID)?,
                name: r.str(ma::NAME)?,
                suspended: r.yes_no(ma::IS_SUSPENDED)?,
                blocked_for_manual_entry: r.yes_no(ma::DO_NOT_ALLOW_MANUAL_ENTRY)?,
                active_from: r.date(ma::ACTIVE_FROM)?,
                active_to: r.date(ma::ACTIVE_TO)?,
            };
            out.insert(a.id.clone(), a);
        }
        Ok(out)
    }

    /// Shared values (`LegalEntityId eq ''`) plus the company's own; the company's win.
    async fn dimension_values(
        &self,
        company: &str,
    ) -> Result<BTreeMap<(String, String), DimensionValue>, D365Error> {
        let filter = format!(
            "{le} eq '' or {le} eq {}",
            quote(company),
            le = dv::LEGAL_ENTITY
        );
        let rows = self.odata.get_all(dv::SET, Some(filter), &[]).await?;
        let mut shared = BTreeMap::new();
        let mut own = BTreeMap::new();
        for r in &rows {
            let le = r.str(dv::LEGAL_ENTITY)?;
            let v = dimension_value(r)?;
            let key = (v.dimension.clone(), v.value.clone());
            if le.is_empty() {
                shared.insert(key, v);
            } else if le.eq_ignore_ascii_case(company) {
                own.insert(key, v);
            }
        }
        shared.extend(own);
        Ok(shared)
    }

    async fn journal_names(
        &self,
        company: &str,
    ) -> Result<BTreeMap<String, JournalName>, D365Error> {
        let filter = format!("{} eq {}", names::DATA_AREA_ID, quote(company));
        let rows = self.odata.get_all(jn::SET, Some(filter), &[]).await?;
        let mut out = BTreeMap::new();
        for r in &rows {
            if !r.str(names::DATA_AREA_ID)?.eq_ignore_ascii_case(company) {
                continue;
            }
            let nv = r.str(jn::NEW_VOUCHER)?;
            let voucher_allocation = voucher_allocation(&nv).ok_or_else(|| {
                field_err(
                    jn::SET,
                    format!("unknown {} value `{nv}` (see d365::names)", jn::NEW_VOUCHER),
                )
            })?;
            let j = JournalName {
                name: r.str(jn::NAME)?,
                description: r.str(jn::DESCRIPTION)?,
                journal_type: r.str(jn::TYPE)?,
                voucher_allocation,
                workflow_approval: r.yes_no(jn::IS_WORKFLOW_APPROVAL_ACTIVE)?,
            };
            out.insert(j.name.clone(), j);
        }
        Ok(out)
    }

    /// Operating periods of the calendar (dates from `FiscalPeriods`) with the company's status
    /// (from `LedgerFiscalPeriodsV2`). A period without a status row counts as Closed.
    async fn periods(&self, company: &str, calendar: &str) -> Result<Vec<FiscalPeriod>, D365Error> {
        let pf = format!("{} eq {}", fp::CALENDAR, quote(calendar));
        let sf = format!(
            "{} eq {} and {} eq {}",
            lp::LEGAL_ENTITY,
            quote(company),
            lp::CALENDAR,
            quote(calendar)
        );
        let (periods, statuses) = tokio::try_join!(
            self.odata.get_all(fp::SET, Some(pf), &[]),
            self.odata.get_all(lp::SET, Some(sf), &[]),
        )?;
        let mut status_of = BTreeMap::new();
        for r in &statuses {
            if !r.str(lp::LEGAL_ENTITY)?.eq_ignore_ascii_case(company) {
                continue;
            }
            let s = r.str(lp::STATUS)?;
            let st = period_status(&s).ok_or_else(|| {
                field_err(
                    lp::SET,
                    format!("unknown {} value `{s}` (see d365::names)", lp::STATUS),
                )
            })?;
            status_of.insert((r.str(lp::YEAR)?, r.str(lp::PERIOD)?), st);
        }
        let mut out = Vec::new();
        for r in &periods {
            if !r.str(fp::TYPE)?.eq_ignore_ascii_case(fp::TYPE_OPERATING) {
                continue;
            }
            let year = r.str(fp::YEAR)?;
            let name = r.str(fp::NAME)?;
            let status = status_of
                .get(&(year.clone(), name.clone()))
                .copied()
                .unwrap_or(PeriodStatus::Closed);
            out.push(FiscalPeriod {
                calendar: r.str(fp::CALENDAR)?,
                year,
                name,
                start: r.req_date(fp::START)?,
                end: r.req_date(fp::END)?,
                status,
            });
        }
        out.sort_by_key(|p| p.start);
        Ok(out)
    }
}

fn dimension_value(r: &Row) -> Result<DimensionValue, D365Error> {
    Ok(DimensionValue {
        dimension: r.str(dv::DIMENSION)?,
        value: r.str(dv::VALUE)?,
        suspended: r.yes_no(dv::IS_SUSPENDED)?,
        blocked_for_manual_entry: r.yes_no(dv::IS_BLOCKED_FOR_MANUAL_ENTRY)?,
        is_total: r.yes_no(dv::IS_TOTAL)?,
        active_from: r.date(dv::ACTIVE_FROM)?,
        active_to: r.date(dv::ACTIVE_TO)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_parsing() {
        let f = parse_format("Ledger", "MainAccount-Department-CostCenter-Channel", '-').unwrap();
        assert_eq!(
            f.segments,
            ["MainAccount", "Department", "CostCenter", "Channel"]
        );
        assert!(parse_format("x", "Department-MainAccount", '-').is_err());
        assert!(parse_format("x", "MainAccount--Channel", '-').is_err());
        let f = parse_format("x", "MainAccount|BU", '|').unwrap();
        assert_eq!(f.segments, ["MainAccount", "BU"]);
    }

    #[test]
    fn enum_symbols() {
        assert_eq!(
            voucher_allocation("BalanceSheet"),
            Some(VoucherAllocation::InConnectionWithBalance)
        );
        assert_eq!(
            voucher_allocation("Manually"),
            Some(VoucherAllocation::Manual)
        );
        assert_eq!(
            voucher_allocation("OneVoucher"),
            Some(VoucherAllocation::OneVoucherNumberOnly)
        );
        assert_eq!(voucher_allocation("Nope"), None);
        // FiscalPeriodStatus: OnHold = 0, Open = 1, Closed = 2; there is no `Stopped`.
        assert_eq!(period_status("OnHold"), Some(PeriodStatus::OnHold));
        assert_eq!(period_status("Open"), Some(PeriodStatus::Open));
        assert_eq!(period_status("Closed"), Some(PeriodStatus::Closed));
        assert_eq!(period_status("Stopped"), None);
    }
}
