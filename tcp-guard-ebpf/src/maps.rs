//! The maps the programs share with the controller.

use crate::view::opaque;
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use tcp_guard_common::{
    flow::{Flow, FlowKey},
    stats::{Counter, Stats},
};

/// Half-open flows. Sizes here are defaults; the controller sets both from
/// its configuration at load time.
#[map]
pub static HALF_OPEN: HashMap<FlowKey, Flow> = HashMap::with_max_entries(65_536, 0);

/// Every other tracked flow, in a table of its own so half-open floods
/// cannot displace it.
#[map]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(262_144, 0);

/// Per-CPU packet counters: a single entry holding every counter, so a packet
/// costs one map lookup however many counters it bumps.
#[map]
static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's counters, for the duration of one program run.
pub struct Counters(*mut Stats);

impl Counters {
    #[inline(always)]
    pub fn this_cpu() -> Option<Self> {
        STATS.get_ptr_mut(0).map(Counters)
    }

    #[inline(always)]
    pub fn bump(&mut self, counter: Counter) {
        // The counter may come from an enum read back from the stack; LLVM
        // trusts its range and would drop the check below, the verifier won't.
        let index = opaque(counter as usize);
        // SAFETY: the pointer comes from a per-CPU map lookup and is only
        // used by this program run on this CPU.
        let stats = unsafe { &mut *self.0 };
        if let Some(slot) = stats.counters.get_mut(index) {
            *slot += 1;
        }
    }
}
