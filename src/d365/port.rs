//! `LedgerGateway` port implemented by the D365 client.

use async_trait::async_trait;

use super::{
    BatchSettings, ChangesetOutcome, D365Client, D365Error, DeleteOutcome, JournalHeader,
    JournalLineRow, NewJournalLine,
};
use crate::domain::reference::ReferenceData;
use crate::ports::{
    Cause, LedgerError, LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine, VoucherOutcome,
};

impl From<D365Error> for LedgerError {
    fn from(e: D365Error) -> Self {
        match e {
            D365Error::Rejected { .. } | D365Error::InvalidInput(_) | D365Error::Setup(_) => {
                LedgerError::Rejected(Cause::error(e))
            }
            D365Error::OutcomeUnknown { .. } => LedgerError::OutcomeUnknown(Cause::error(e)),
            D365Error::OutOfTime { .. } => LedgerError::OutOfTime(Cause::error(e)),
            D365Error::Auth(_) | D365Error::NotAuthorized { .. } | D365Error::Config(_) => {
                LedgerError::Auth(Cause::error(e))
            }
            other => LedgerError::Other(Cause::error(other)),
        }
    }
}

fn header(h: JournalHeader) -> LedgerHeader {
    LedgerHeader {
        legal_entity: h.legal_entity,
        batch_number: h.batch_number,
        journal_name: h.journal_name,
        description: h.description,
        is_posted: h.is_posted,
    }
}

fn line(l: JournalLineRow) -> LedgerLine {
    LedgerLine {
        batch_number: l.batch_number,
        line_number: l.line_number,
        voucher: l.voucher,
        trans_date: l.trans_date,
        account_display: l.account_display,
        offset_display: l.offset_display,
        debit: l.debit,
        credit: l.credit,
        currency: l.currency,
        text: l.text,
    }
}

#[async_trait]
impl LedgerGateway for D365Client {
    async fn reference(&self, legal_entity: &str) -> Result<ReferenceData, LedgerError> {
        Ok(self.load_reference(legal_entity).await?)
    }

    async fn find_headers(
        &self,
        legal_entity: &str,
        description_prefix: &str,
    ) -> Result<Vec<LedgerHeader>, LedgerError> {
        Ok(
            D365Client::find_headers(self, legal_entity, description_prefix)
                .await?
                .into_iter()
                .map(header)
                .collect(),
        )
    }

    async fn create_header(
        &self,
        legal_entity: &str,
        journal_name: &str,
        description: &str,
    ) -> Result<LedgerHeader, LedgerError> {
        Ok(header(
            D365Client::create_header(self, legal_entity, journal_name, description).await?,
        ))
    }

    async fn lines(
        &self,
        legal_entity: &str,
        batch_number: &str,
    ) -> Result<Vec<LedgerLine>, LedgerError> {
        Ok(D365Client::lines(self, legal_entity, batch_number)
            .await?
            .into_iter()
            .map(line)
            .collect())
    }

    async fn create_vouchers(
        &self,
        vouchers: &[Vec<NewLedgerLine>],
        max_operations: usize,
    ) -> Result<Option<Vec<VoucherOutcome>>, LedgerError> {
        let changesets: Vec<Vec<NewJournalLine>> = vouchers
            .iter()
            .map(|v| v.iter().map(new_line).collect())
            .collect();
        let settings = BatchSettings {
            max_operations,
            ..BatchSettings::default()
        };
        let outcomes = self.create_lines_batched(&changesets, &settings).await?;
        // The request as a whole was refused (an environment without `$batch`, a batch-size
        // limit lower than configured, …): nothing was applied, so posting line by line instead
        // is safe. A voucher refused *inside* a processed batch is `Failed`, not this.
        if let Some(ChangesetOutcome::Refused { status, messages }) = outcomes.first() {
            tracing::warn!(
                status,
                "D365 refused the $batch request as a whole ({}); posting line by line instead",
                messages.join("; ")
            );
            return Ok(None);
        }
        Ok(Some(
            outcomes
                .into_iter()
                .map(|o| match o {
                    ChangesetOutcome::Created(rows) => {
                        VoucherOutcome::Created(rows.into_iter().map(line).collect())
                    }
                    ChangesetOutcome::Failed { status, messages } => {
                        VoucherOutcome::Failed(format!(
                            "D365 refused the voucher (HTTP {status}): {}",
                            messages.join("; ")
                        ))
                    }
                    ChangesetOutcome::NotProcessed { reason } => {
                        VoucherOutcome::NotProcessed(reason)
                    }
                    ChangesetOutcome::OutOfTime { reason } => VoucherOutcome::OutOfTime(reason),
                    ChangesetOutcome::Refused { status, messages } => {
                        VoucherOutcome::NotProcessed(format!(
                            "the $batch request was refused (HTTP {status}): {}",
                            messages.join("; ")
                        ))
                    }
                    ChangesetOutcome::Unknown { detail } => VoucherOutcome::Unknown(detail),
                })
                .collect(),
        ))
    }

    async fn create_line(&self, l: &NewLedgerLine) -> Result<LedgerLine, LedgerError> {
        let new = new_line(l);
        Ok(line(D365Client::create_line(self, &new).await?))
    }

    async fn header(
        &self,
        legal_entity: &str,
        batch_number: &str,
    ) -> Result<Option<LedgerHeader>, LedgerError> {
        Ok(D365Client::header(self, legal_entity, batch_number)
            .await?
            .map(header))
    }

    async fn delete_line(
        &self,
        legal_entity: &str,
        batch_number: &str,
        line_number: &str,
    ) -> Result<bool, LedgerError> {
        Ok(D365Client::delete_line(self, legal_entity, batch_number, line_number).await?)
    }

    async fn delete_lines_atomic(
        &self,
        legal_entity: &str,
        batch_number: &str,
        line_numbers: &[String],
    ) -> Result<bool, LedgerError> {
        match D365Client::delete_lines_atomic(self, legal_entity, batch_number, line_numbers)
            .await?
        {
            DeleteOutcome::Deleted => Ok(true),
            DeleteOutcome::Refused { status, messages } => {
                tracing::warn!(
                    status,
                    "D365 refused the $batch delete as a whole ({}); deleting line by line instead",
                    messages.join("; ")
                );
                Ok(false)
            }
            DeleteOutcome::Failed { status, messages } => Err(LedgerError::Rejected(
                format!(
                    "D365 refused to delete lines {} of journal {batch_number} (HTTP {status}): {}",
                    line_numbers.join(", "),
                    messages.join("; ")
                )
                .into(),
            )),
            DeleteOutcome::NotProcessed { reason } => Err(LedgerError::Other(reason.into())),
            DeleteOutcome::Unknown { detail } => Err(LedgerError::OutcomeUnknown(detail.into())),
        }
    }

    async fn delete_header(
        &self,
        legal_entity: &str,
        batch_number: &str,
    ) -> Result<bool, LedgerError> {
        Ok(D365Client::delete_header(self, legal_entity, batch_number).await?)
    }
}

fn new_line(l: &NewLedgerLine) -> NewJournalLine {
    NewJournalLine {
        legal_entity: l.legal_entity.clone(),
        batch_number: l.batch_number.clone(),
        trans_date: l.trans_date,
        account_display: l.account_display.clone(),
        offset_display: l.offset_display.clone(),
        debit: l.debit,
        credit: l.credit,
        currency: l.currency.clone(),
        text: l.text.clone(),
        voucher: l.voucher.clone(),
    }
}
