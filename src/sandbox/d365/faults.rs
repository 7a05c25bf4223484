//! Test knobs for the fault-injection suite (`tests/faults.rs`): what is still armed, so a test
//! can prove an injected fault actually fired instead of passing vacuously.

use super::D365Sim;

/// Injected faults not yet consumed by a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingFaults {
    /// F&O requests still to be answered 429 ([`D365Sim::throttle_next`]).
    pub throttled: usize,
    /// Single writes still to fail ([`D365Sim::fail_next_writes`]).
    pub writes: usize,
    /// `$batch` requests still to fail ([`D365Sim::fail_next_batches`]).
    pub batches: usize,
}

impl PendingFaults {
    pub fn is_empty(&self) -> bool {
        *self == PendingFaults::default()
    }
}

impl D365Sim {
    /// Faults armed with the knobs above that no request has consumed yet.
    pub fn pending_faults(&self) -> PendingFaults {
        let st = self.state();
        PendingFaults {
            throttled: st.throttle_remaining,
            writes: st.write_failures.len(),
            batches: st.batch_failures.len(),
        }
    }
}
