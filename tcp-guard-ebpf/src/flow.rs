//! Applies the shared transition function to the flow tables.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tcp_guard_common::{
    flow::{Direction, Flow, FlowKey, Seg, Step, transition},
    packet::TcpSegment,
    stats::Counter,
};

use crate::maps::{Counters, FLOWS, HALF_OPEN};

/// Where a flow was found.
#[derive(Clone, Copy)]
struct Found {
    entry: *mut Flow,
    half_open: bool,
}

/// Tracks one segment of a flow, in either direction.
#[inline(always)]
pub fn track(counters: &mut Counters, segment: &TcpSegment, direction: Direction, window_scale: Option<u8>) {
    let key = FlowKey::new(segment, direction);
    let found = match FLOWS.get_ptr_mut(key) {
        Some(entry) => Some(Found {
            entry,
            half_open: false,
        }),
        None => HALF_OPEN.get_ptr_mut(key).map(|entry| Found {
            entry,
            half_open: true,
        }),
    };
    // SAFETY: map values stay valid for the program run (RCU); copied out
    // before the pure function looks at them.
    let old = found.map(|f| unsafe { *f.entry });
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match transition(old.as_ref(), &Seg::new(segment, direction, window_scale), now) {
        Step::Store(flow, event) => {
            if let Some(counter) = event.counter() {
                counters.bump(counter);
            }
            store(counters, &key, flow, found);
        }
        Step::Remove(event) => {
            if let Some(counter) = event.counter() {
                counters.bump(counter);
            }
            if let Some(found) = found {
                // An error means another CPU removed it first: nothing to do.
                let _gone = if found.half_open {
                    HALF_OPEN.remove(key)
                } else {
                    FLOWS.remove(key)
                };
            }
        }
        Step::Keep(event) => {
            if let Some(counter) = event.counter() {
                counters.bump(counter);
            }
        }
        Step::Invalid(reason) => counters.bump(reason.counter()),
    }
}

/// Writes `flow` to the table its state belongs in, moving it if needed.
#[inline(always)]
fn store(counters: &mut Counters, key: &FlowKey, flow: Flow, found: Option<Found>) {
    let half_open = flow.state().is_some_and(|s| s.is_half_open());
    match found {
        Some(found) if found.half_open == half_open => {
            // SAFETY: a live map value, see `track`.
            unsafe { *found.entry = flow };
        }
        Some(found) => {
            let (to, from) = if half_open {
                (&HALF_OPEN, &FLOWS)
            } else {
                (&FLOWS, &HALF_OPEN)
            };
            if to.insert(key, flow, 0).is_ok() {
                let _gone = from.remove(key);
            } else {
                counters.bump(full_counter(half_open));
                // Keep it where it is, up to date, rather than lose it.
                // SAFETY: a live map value, see `track`.
                unsafe { *found.entry = flow };
            }
        }
        None => {
            let table = if half_open { &HALF_OPEN } else { &FLOWS };
            if table.insert(key, flow, 0).is_err() {
                counters.bump(full_counter(half_open));
            }
        }
    }
}

fn full_counter(half_open: bool) -> Counter {
    if half_open {
        Counter::HalfOpenTableFull
    } else {
        Counter::FlowTableFull
    }
}
