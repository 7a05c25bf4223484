//! Test knobs for the finance controls: change what D365 holds behind the connector's back,
//! the way a person editing an unposted journal (or a bad customisation) would.

use rust_decimal::Decimal;

use super::D365Sim;

impl D365Sim {
    /// Sets a line's debit and credit as if someone edited it in F&O (journal totals follow).
    /// Returns `false` when there is no such line.
    pub fn tamper_line(
        &self,
        legal_entity: &str,
        batch: &str,
        line_number: u32,
        debit: Decimal,
        credit: Decimal,
    ) -> bool {
        let mut st = self.state();
        let le = legal_entity.to_ascii_lowercase();
        let Some(idx) = st.lines.iter().position(|l| {
            l.legal_entity == le && l.batch_number == batch && l.line_number == line_number
        }) else {
            return false;
        };
        let (old_d, old_c) = (st.lines[idx].debit, st.lines[idx].credit);
        st.lines[idx].debit = debit;
        st.lines[idx].credit = credit;
        for h in st
            .headers
            .iter_mut()
            .filter(|h| h.legal_entity == le && h.batch_number == batch)
        {
            h.total_debit += debit - old_d;
            h.total_credit += credit - old_c;
        }
        true
    }
}
