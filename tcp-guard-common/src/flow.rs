//! Per-flow TCP state, as the guarded host sees it, and the pure transition
//! function both programs call (and the tests prove outside the verifier).
//!
//! The host's side of a connection is tracked from both directions: segments
//! the peer sends (ingress, XDP) and segments the host sends (egress, TC).
//! Egress segments come from the host's own TCP stack and are trusted: they
//! say what state the host is in. Ingress segments may be spoofed: one whose
//! numbers do not fit the flow is [`Invalid`] and leaves the flow unchanged.

use crate::packet::{Family, TcpClass, TcpFlags, TcpSegment};

/// The host's TCP state for one flow (RFC 793 names; `ss` names in [`TcpState::ss_name`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// The host sent a SYN.
    SynSent = 1,
    /// The peer sent a SYN; the host answers (or answered) with a SYN-ACK.
    SynRcvd,
    Established,
    /// The host sent a FIN, not yet acknowledged.
    FinWait1,
    /// The host's FIN was acknowledged; the peer has not sent its FIN.
    FinWait2,
    /// The peer sent a FIN; the host has not.
    CloseWait,
    /// Both sent FINs before either was acknowledged (simultaneous close).
    Closing,
    /// The host sent its FIN after the peer's; waiting for its ACK.
    LastAck,
    TimeWait,
    /// Gone: the entry is removed when a flow reaches it.
    Closed,
}

impl TcpState {
    pub const ALL: [TcpState; 10] = [
        TcpState::SynSent,
        TcpState::SynRcvd,
        TcpState::Established,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::Closing,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Closed,
    ];

    /// The states a stored flow can be in (every state but `Closed`).
    pub const STORED: [TcpState; 9] = [
        TcpState::SynSent,
        TcpState::SynRcvd,
        TcpState::Established,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::Closing,
        TcpState::LastAck,
        TcpState::TimeWait,
    ];

    pub const fn from_u8(value: u8) -> Option<TcpState> {
        Some(match value {
            1 => TcpState::SynSent,
            2 => TcpState::SynRcvd,
            3 => TcpState::Established,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::CloseWait,
            7 => TcpState::Closing,
            8 => TcpState::LastAck,
            9 => TcpState::TimeWait,
            10 => TcpState::Closed,
            _ => return None,
        })
    }

    /// The name `ss -tan` prints for this state.
    pub const fn ss_name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRcvd => "SYN-RECV",
            TcpState::Established => "ESTAB",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::Closing => "CLOSING",
            TcpState::LastAck => "LAST-ACK",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Closed => "CLOSED",
        }
    }

    /// snake_case name, for config keys and counters.
    pub const fn as_str(self) -> &'static str {
        match self {
            TcpState::SynSent => "syn_sent",
            TcpState::SynRcvd => "syn_rcvd",
            TcpState::Established => "established",
            TcpState::FinWait1 => "fin_wait_1",
            TcpState::FinWait2 => "fin_wait_2",
            TcpState::CloseWait => "close_wait",
            TcpState::Closing => "closing",
            TcpState::LastAck => "last_ack",
            TcpState::TimeWait => "time_wait",
            TcpState::Closed => "closed",
        }
    }

    /// Half-open flows: those opened by a peer's SYN take at most their
    /// share of the flow table (`CountHash::half_open_max`), so a flood of
    /// them can never push out established ones.
    pub const fn is_half_open(self) -> bool {
        matches!(self, TcpState::SynSent | TcpState::SynRcvd)
    }
}

/// Which way a segment travels, seen from the guarded host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the peer to the host (XDP).
    Ingress,
    /// From the host to the peer (TC egress).
    Egress,
}

/// A flow, oriented from the host: both directions of a connection give the
/// same key. Addresses are in network byte order (an IPv4 address fills the
/// first 4 bytes, the rest are zero); ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}

// SAFETY: repr(C), integer and byte-array fields only. The controller hands
// keys to the expire program as packet data.
unsafe impl crate::packet::Header for FlowKey {}

impl FlowKey {
    #[inline(always)]
    pub fn new(segment: &TcpSegment, direction: Direction) -> FlowKey {
        let (local_addr, remote_addr, local_port, remote_port) = match direction {
            Direction::Ingress => (segment.dst, segment.src, segment.dst_port, segment.src_port),
            Direction::Egress => (segment.src, segment.dst, segment.src_port, segment.dst_port),
        };
        FlowKey {
            local_addr,
            remote_addr,
            local_port,
            remote_port,
            family: segment.family as u8,
            _pad: [0; 3],
        }
    }

    pub const fn family(&self) -> Option<Family> {
        match self.family {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }
}

/// What the guard remembers of a flow. Sequence numbers are raw TCP values
/// (host byte order); times are CLOCK_MONOTONIC ns, as the kernel's coarse
/// clock gives them (`bpf_ktime_get_coarse_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub created_ns: u64,
    /// Last segment accepted for this flow, either way.
    pub last_ns: u64,
    /// The host's initial sequence number (K), once seen on egress.
    pub host_isn: u32,
    /// The peer's initial sequence number (J).
    pub peer_isn: u32,
    /// The sequence number after the last byte (or SYN/FIN) the host sent.
    pub host_next: u32,
    /// The sequence number after the last byte (or SYN/FIN) the peer sent.
    pub peer_next: u32,
    /// Sequence number of the host's FIN; its ACK acknowledges this + 1.
    pub host_fin: u32,
    /// Bumped by every rewrite in the kernel, odd while one is under way:
    /// a CPU (XDP ingress, TC egress, expiry) rewrites or removes a flow
    /// only if it moves this from the even value it read (compare and
    /// swap), so concurrent updates of one flow neither tear it nor both
    /// release its counts. A new flow starts at a random even value (see
    /// the fast path's `fresh_generation`). Only that kernel glue sets it;
    /// the transition function's value is ignored.
    pub generation: u32,
    /// The window the host last advertised, unscaled.
    pub host_window: u16,
    /// The host's window scale, from its SYN or SYN-ACK.
    pub host_wscale: u8,
    /// A [`TcpState`] as u8.
    pub state: u8,
    /// [`Flow::HOST_SEQ_KNOWN`], [`Flow::ADOPTED`], [`Flow::COUNTED`]
    pub flags: u8,
    /// The source prefix length its half-open counts were taken with.
    pub prefix_len: u8,
    pub _pad: [u8; 2],
}

impl Flow {
    /// `host_isn` and `host_next` come from segments the host sent (needs the
    /// egress program); without them acknowledgement numbers are not checked.
    pub const HOST_SEQ_KNOWN: u8 = 0x01;
    /// Picked up mid-connection from an egress segment (e.g. the connection
    /// predates the guard): the handshake was not seen.
    pub const ADOPTED: u8 = 0x02;
    /// Counted in the half-open limits (`COUNTS`) while in SYN-RECV; the
    /// counts are released when it leaves SYN-RECV.
    pub const COUNTED: u8 = 0x04;
    /// Opened by a peer's SYN while the egress program watches: the host's
    /// SYN-ACK must be seen before an ACK may complete the handshake (if the
    /// kernel never answered the SYN, a spoofed ACK would otherwise open a
    /// phantom connection).
    pub const AWAIT_SYN_ACK: u8 = 0x08;

    pub const fn state(&self) -> Option<TcpState> {
        TcpState::from_u8(self.state)
    }

    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Notes of established flows per CPU: [`RecentFlow`]'s direct-mapped slots.
pub const RECENT_FLOW_SLOTS: u32 = 512;

/// One CPU's notes, in one value of a per-CPU map: a note is found at a
/// fixed offset from one pointer. (A per-CPU array of single notes keeps a
/// pointer per entry, each note allocated apart: two dependent reads
/// scattered over the per-CPU area, measured at +60 ns a segment.) At
/// 32 KiB, the most a per-CPU value may hold.
#[repr(C)]
pub struct RecentFlows {
    pub slots: [RecentFlow; RECENT_FLOW_SLOTS as usize],
}

const _: () = assert!(size_of::<RecentFlows>() <= 32 * 1024);

/// A CPU's note of an established flow it has just stored from one of the
/// peer's segments. The peer's ACKs that follow on that CPU within the same
/// clock tick would change nothing in the stored flow but `peer_next` (its
/// `last_ns` is that tick already), so they are checked against the note
/// and skip the flow table ([`RecentFlow::absorbs`]); the `peer_next` they
/// move stays in the note, and that CPU's next table update of the flow takes
/// it ([`RecentFlow::merge_into`]).
///
/// Another CPU's update of the flow within the tick does not reach the
/// note, which is safe for what an absorbed ACK could have changed: the
/// host's FIN is acknowledged only by an ACK number past every `host_next`
/// stored before the FIN was sent, above the note's `ack_high`, so that ACK
/// always goes to the table. What can be lost is bounded: a flow another
/// CPU removed within the tick has its peer's ACKs passed there unnoticed
/// until the tick ends; and the `peer_next` a note absorbed reaches the
/// table only through that CPU's next update of the flow (not if the note
/// is pushed out of its slot by another flow's, or the flow is next updated
/// elsewhere), until the host's own ACK number moves it past.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentFlow {
    /// The peer's address (as an ingress segment's source), in words.
    pub remote: [u32; 4],
    pub local: [u32; 4],
    /// The peer's port, then the host's, as an ingress segment carries them.
    pub ports: [u16; 2],
    /// 4 or 6.
    pub family: u8,
    /// Non-zero when `ack_low` and `ack_high` bound the ACK numbers (the
    /// host's sequence numbers were known).
    pub bounded: u8,
    pub _pad: [u8; 2],
    /// The tick the flow was stored at (its `last_ns`); 0: no note.
    pub stamp: u64,
    /// The ACK numbers the stored flow accepts: `[ack_low, ack_high]`.
    pub ack_low: u32,
    pub ack_high: u32,
    /// The end of the furthest segment from the peer, absorbed or stored.
    pub peer_next: u32,
    /// The peer's initial sequence number: which connection on these ports.
    pub peer_isn: u32,
}

impl RecentFlow {
    /// The slot of the note of `segment`'s flow, below [`RECENT_FLOW_SLOTS`].
    #[inline(always)]
    pub fn slot(segment: &TcpSegment, direction: Direction) -> u32 {
        let (remote, _, ports) = Self::identity(segment, direction);
        let mixed =
            remote[0] ^ remote[1] ^ remote[2] ^ remote[3] ^ (u32::from(ports[0]) << 16 | u32::from(ports[1]));
        mixed.wrapping_mul(0x9e37_79b1) >> (32 - RECENT_FLOW_SLOTS.trailing_zeros())
    }

    /// The remote and local address, in words, and the ports in ingress order.
    #[inline(always)]
    fn identity(segment: &TcpSegment, direction: Direction) -> ([u32; 4], [u32; 4], [u16; 2]) {
        const _: () = assert!(
            align_of::<TcpSegment>() >= 4
                && core::mem::offset_of!(TcpSegment, src) % 4 == 0
                && core::mem::offset_of!(TcpSegment, dst) % 4 == 0
        );
        // SAFETY: both addresses lie 4-byte aligned in the segment (checked
        // above), and any bytes are valid words. Read as words: a byte-wise
        // build of them compiles to 16 byte loads each on BPF.
        let (src, dst) = unsafe {
            (
                core::ptr::addr_of!(segment.src).cast::<[u32; 4]>().read(),
                core::ptr::addr_of!(segment.dst).cast::<[u32; 4]>().read(),
            )
        };
        match direction {
            Direction::Ingress => (src, dst, [segment.src_port, segment.dst_port]),
            Direction::Egress => (dst, src, [segment.dst_port, segment.src_port]),
        }
    }

    /// Makes this the note of `flow`, as just stored for `segment`'s flow,
    /// if it is established; else leaves it as it was and returns false.
    /// (Field by field: a whole-value copy compiles to a byte-by-byte
    /// `memcpy` call on BPF.)
    #[inline(always)]
    pub fn note(&mut self, segment: &TcpSegment, direction: Direction, flow: &Flow) -> bool {
        if flow.state() != Some(TcpState::Established) {
            return false;
        }
        let (remote, local, ports) = Self::identity(segment, direction);
        self.remote = remote;
        self.local = local;
        self.ports = ports;
        self.family = segment.family as u8;
        self.bounded = u8::from(flow.has(Flow::HOST_SEQ_KNOWN));
        self.stamp = flow.last_ns;
        self.ack_low = flow.host_isn.wrapping_add(1);
        self.ack_high = flow.host_next;
        self.peer_next = flow.peer_next;
        self.peer_isn = flow.peer_isn;
        true
    }

    /// Drops the note: its slot holds none.
    #[inline(always)]
    pub fn clear(&mut self) {
        self.stamp = 0;
    }

    /// Whether this is a note of `segment`'s flow.
    #[inline(always)]
    pub fn is_for(&self, segment: &TcpSegment, direction: Direction) -> bool {
        let (remote, local, ports) = Self::identity(segment, direction);
        self.stamp != 0
            && self.remote == remote
            && self.local == local
            && self.ports == ports
            && self.family == segment.family as u8
    }

    /// Whether `seg`, of this note's flow and arriving at `now`, would leave
    /// the stored flow as it is but for `peer_next`: an ACK from the peer
    /// (no SYN, FIN or RST) in the tick the flow was stored at, acknowledging
    /// only what the host had sent by then, and starting in the peer's
    /// sequence space as far as it went (in order, or a retransmission: a
    /// later connection on these ports, its ISN random, almost never is).
    /// If so, the note takes its `peer_next`.
    #[inline(always)]
    pub fn absorbs(&mut self, seg: &Seg, now: u64) -> bool {
        if self.stamp != now
            || seg.direction != Direction::Ingress
            || seg.flags.class() != TcpClass::Ack
            || (self.bounded != 0 && !seq_within(seg.ack, self.ack_low, self.ack_high))
            || !seq_within(seg.seq, self.peer_isn.wrapping_add(1), self.peer_next)
        {
            return false;
        }
        let end = seg.end();
        if seq_after(end, self.peer_next) {
            self.peer_next = end;
        }
        true
    }

    /// Gives `flow`, as read from the table, the `peer_next` of the segments
    /// this note absorbed: only if it is the connection the note was made of
    /// and no one stored it after the note's tick (a note older than that is
    /// spent, and after 2 GiB more its `peer_next` would read as ahead).
    #[inline(always)]
    pub fn merge_into(&self, flow: &mut Flow) {
        if self.stamp != 0
            && flow.last_ns <= self.stamp
            && flow.peer_isn == self.peer_isn
            && seq_after(self.peer_next, flow.peer_next)
        {
            flow.peer_next = self.peer_next;
        }
    }
}

/// The parts of a segment the transition function reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub direction: Direction,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u32,
    pub window: u16,
    /// Window scale option, read from SYN and SYN-ACK segments only.
    pub window_scale: Option<u8>,
}

impl Seg {
    #[inline(always)]
    pub fn new(segment: &TcpSegment, direction: Direction, window_scale: Option<u8>) -> Seg {
        Seg {
            direction,
            flags: segment.flags,
            seq: segment.seq,
            ack: segment.ack,
            payload_len: segment.payload_len,
            window: segment.window,
            window_scale,
        }
    }

    /// Sequence space the segment occupies: payload, plus one each for SYN and FIN.
    const fn seq_len(&self) -> u32 {
        let mut len = self.payload_len;
        if self.flags.has(TcpFlags::SYN) {
            len = len.wrapping_add(1);
        }
        if self.flags.has(TcpFlags::FIN) {
            len = len.wrapping_add(1);
        }
        len
    }

    pub const fn end(&self) -> u32 {
        self.seq.wrapping_add(self.seq_len())
    }

    /// Sequence number of this segment's FIN (meaningful when FIN is set).
    const fn fin_seq(&self) -> u32 {
        self.seq.wrapping_add(self.payload_len)
    }
}

/// Something that happened to a flow; each has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The flow entered this state.
    Entered(TcpState),
    /// Closed by a valid RST (either way).
    Reset,
    /// An egress segment on an unknown flow: tracked from now on.
    Adopted,
    /// A SYN on a TIME-WAIT flow started a new connection on the same tuple.
    Reopened,
    SynRetransmit,
    FinRetransmit,
    /// A segment that fits the flow and changes nothing (data, ACKs).
    NoChange,
}

/// Why an ingress segment was rejected. The flow is left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not a SYN, and no flow: a spoofed ACK/FIN/RST, or a flow the guard never saw.
    NoFlow,
    /// The handshake's final ACK does not acknowledge the host's SYN-ACK (ack != K+1).
    BadHandshakeAck,
    /// A SYN-ACK that does not acknowledge the host's SYN (ack != ISN+1), or
    /// arrives where the host sent no SYN.
    BadSynAck,
    /// A SYN on an established (or closing) flow, or a SYN with another ISN
    /// than the half-open flow's.
    UnexpectedSyn,
    /// Acknowledges data the host never sent.
    AckNotSent,
    /// An RST whose sequence number is outside the host's receive window.
    RstOutOfWindow,
    /// Control flags no TCP stack sends (SYN+FIN, FIN without ACK, none).
    BadFlags,
}

impl Invalid {
    pub const ALL: [Invalid; 7] = [
        Invalid::NoFlow,
        Invalid::BadHandshakeAck,
        Invalid::BadSynAck,
        Invalid::UnexpectedSyn,
        Invalid::AckNotSent,
        Invalid::RstOutOfWindow,
        Invalid::BadFlags,
    ];
}

/// What to do with the flow table after one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Store the flow [`transition`] wrote to `out` (new, or replacing the old value).
    Store(Event),
    /// Remove the flow.
    Remove(Event),
    /// Keep the flow as it is.
    Keep(Event),
    /// Keep the flow as it is (or stay without one), and count why.
    Invalid(Invalid),
}

/// `a` is after `b` in sequence space.
#[inline(always)]
pub const fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `x` lies in `[low, high]` in sequence space.
#[inline(always)]
pub const fn seq_within(x: u32, low: u32, high: u32) -> bool {
    x.wrapping_sub(low) <= high.wrapping_sub(low)
}

/// RFC 7323's largest window scale.
const MAX_WSCALE: u8 = 14;

/// The next state of a flow, given one segment.
///
/// `flow` is the stored flow, if any; `now` the current time in ns. When the
/// step is [`Step::Store`], the flow to store is written to `out`.
/// (Never inlined, and no flow in the return value: in BPF the stack of a
/// call chain is 512 bytes in all, so big values go through `out`, which the
/// kernel side points at per-CPU scratch memory.)
#[inline(never)]
pub fn transition(flow: Option<&Flow>, seg: &Seg, now: u64, out: &mut Flow) -> Step {
    let class = seg.flags.class();
    if class == TcpClass::Other {
        return Step::Invalid(Invalid::BadFlags);
    }
    // A flow that reaches CLOSED is removed, never stored: a stored value
    // that says CLOSED (or nothing valid) counts as no flow.
    let flow = flow.filter(|f| f.state().is_some_and(|s| s != TcpState::Closed));
    match seg.direction {
        Direction::Egress => egress(flow, seg, class, now, out),
        Direction::Ingress => ingress(flow, seg, class, now, out),
    }
}

fn new_flow(now: u64) -> Flow {
    Flow {
        created_ns: now,
        last_ns: now,
        host_isn: 0,
        peer_isn: 0,
        host_next: 0,
        peer_next: 0,
        host_fin: 0,
        generation: 0,
        host_window: 0,
        host_wscale: 0,
        state: TcpState::Closed as u8,
        flags: 0,
        prefix_len: 0,
        _pad: [0; 2],
    }
}

/// Records what a segment the host sent says about its sequence space, and
/// about the peer's: its ACK number is where the host's window starts, which
/// an RST is checked against (ahead of the peer's segments the table saw when
/// a CPU's note absorbed some: see `RecentFlow`).
fn note_host_segment(flow: &mut Flow, seg: &Seg) {
    let end = seg.end();
    if !flow.has(Flow::HOST_SEQ_KNOWN) || seq_after(end, flow.host_next) {
        flow.host_next = end;
    }
    if seg.flags.has(TcpFlags::ACK) && seq_after(seg.ack, flow.peer_next) {
        flow.peer_next = seg.ack;
    }
    flow.flags |= Flow::HOST_SEQ_KNOWN;
    if seg.flags.has(TcpFlags::FIN) {
        flow.host_fin = seg.fin_seq();
    }
    if let Some(scale) = seg.window_scale {
        flow.host_wscale = scale;
    }
    // The window of a SYN or SYN-ACK is never scaled (RFC 7323); store it
    // in the units of later segments.
    flow.host_window = if seg.flags.has(TcpFlags::SYN) {
        seg.window >> host_wscale(flow)
    } else {
        seg.window
    };
}

/// The host's window scale, clamped to what RFC 7323 allows whatever the
/// stored byte says, so shifts by it stay defined.
fn host_wscale(flow: &Flow) -> u8 {
    if flow.host_wscale > MAX_WSCALE {
        MAX_WSCALE
    } else {
        flow.host_wscale
    }
}

/// Records the peer's sequence space from an accepted ingress segment.
fn note_peer_segment(flow: &mut Flow, seg: &Seg) {
    let end = seg.end();
    if seq_after(end, flow.peer_next) {
        flow.peer_next = end;
    }
}

impl Flow {
    /// Moves to `state` and records activity at `now`.
    fn enter(&mut self, state: TcpState, now: u64) {
        self.state = state as u8;
        self.last_ns = now;
    }
}

/// Stores `out` (already updated) in `state`, reporting `event`.
fn store(out: &mut Flow, state: TcpState, now: u64, event: Event) -> Step {
    out.enter(state, now);
    Step::Store(event)
}

/// Stores `out` in a new `state`, reporting the change.
fn store_entered(out: &mut Flow, state: TcpState, now: u64) -> Step {
    store(out, state, now, Event::Entered(state))
}

/// Segments the host sends: the host's TCP stack is the authority.
/// The rules below build the next flow in `out` (a copy of the stored one,
/// or a new one) and say what to do with it.
fn egress(flow: Option<&Flow>, seg: &Seg, class: TcpClass, now: u64, out: &mut Flow) -> Step {
    let Some((old, state)) = flow.and_then(|f| f.state().map(|s| (f, s))) else {
        return egress_new(seg, class, now, out);
    };
    if class == TcpClass::Rst {
        return Step::Remove(Event::Reset);
    }
    if class == TcpClass::Syn {
        // The host retransmitting its SYN, or a new connection on a finished tuple.
        if state == TcpState::SynSent && seg.seq == old.host_isn {
            *out = *old;
            note_host_segment(out, seg);
            return store(out, state, now, Event::SynRetransmit);
        }
        return egress_new(seg, class, now, out);
    }
    *out = *old;
    let retransmit = out.has(Flow::HOST_SEQ_KNOWN) && !seq_after(seg.end(), out.host_next);
    if class == TcpClass::SynAck {
        // The host answers the peer's SYN (also in a simultaneous open).
        let event = if out.has(Flow::HOST_SEQ_KNOWN) && seg.seq == out.host_isn {
            Event::SynRetransmit
        } else {
            Event::NoChange
        };
        out.host_isn = seg.seq;
        note_host_segment(out, seg);
        if state == TcpState::SynSent {
            // Simultaneous open: the peer's SYN arrived after ours.
            out.peer_isn = seg.ack.wrapping_sub(1);
            out.peer_next = seg.ack;
            return store_entered(out, TcpState::SynRcvd, now);
        }
        return store(out, state, now, event);
    }
    note_host_segment(out, seg);
    let next = match (class, state) {
        (TcpClass::Fin, TcpState::SynRcvd | TcpState::Established) => TcpState::FinWait1,
        (TcpClass::Fin, TcpState::CloseWait) => TcpState::LastAck,
        // The host acknowledges the peer's SYN-ACK (the ingress side moved
        // the flow already when it validated the SYN-ACK; this covers a missed one).
        (TcpClass::Ack, TcpState::SynSent) => TcpState::Established,
        (_, other) => other,
    };
    if next != state {
        return store_entered(out, next, now);
    }
    let event = if class == TcpClass::Fin && retransmit {
        Event::FinRetransmit
    } else {
        Event::NoChange
    };
    store(out, state, now, event)
}

/// An egress segment on a flow the guard does not know.
fn egress_new(seg: &Seg, class: TcpClass, now: u64, out: &mut Flow) -> Step {
    *out = new_flow(now);
    match class {
        TcpClass::Syn => {
            out.host_isn = seg.seq;
            note_host_segment(out, seg);
            store_entered(out, TcpState::SynSent, now)
        }
        TcpClass::SynAck => {
            // Its SYN came before the guard was attached, or its entry expired.
            out.host_isn = seg.seq;
            out.peer_isn = seg.ack.wrapping_sub(1);
            out.peer_next = seg.ack;
            note_host_segment(out, seg);
            store_entered(out, TcpState::SynRcvd, now)
        }
        TcpClass::Ack | TcpClass::Fin => {
            // Only the host's stack can send on a connection it has: adopt it.
            out.host_isn = seg.seq;
            out.peer_next = seg.ack;
            out.flags |= Flow::ADOPTED;
            note_host_segment(out, seg);
            let state = if class == TcpClass::Fin {
                TcpState::FinWait1
            } else {
                TcpState::Established
            };
            store(out, state, now, Event::Adopted)
        }
        TcpClass::Rst | TcpClass::Other => Step::Keep(Event::NoChange),
    }
}

/// Whether an ingress ACK number acknowledges only what the host sent.
fn ack_acceptable(flow: &Flow, ack: u32) -> bool {
    !flow.has(Flow::HOST_SEQ_KNOWN) || seq_within(ack, flow.host_isn.wrapping_add(1), flow.host_next)
}

/// Whether the host's FIN is acknowledged by `ack`.
fn acks_host_fin(flow: &Flow, ack: u32) -> bool {
    !flow.has(Flow::HOST_SEQ_KNOWN) || ack == flow.host_fin.wrapping_add(1)
}

/// RST acceptance (RFC 793 / 5961): its sequence number lies in the window
/// the host offers, [peer_next, peer_next + window).
fn rst_acceptable(flow: &Flow, seg: &Seg) -> bool {
    if !flow.has(Flow::HOST_SEQ_KNOWN) || flow.has(Flow::ADOPTED) {
        return true;
    }
    let window = (flow.host_window as u32) << host_wscale(flow);
    let last = flow
        .peer_next
        .wrapping_add(if window == 0 { 0 } else { window - 1 });
    seq_within(seg.seq, flow.peer_next, last)
}

/// Segments from the peer: checked against the flow before they move it.
fn ingress(flow: Option<&Flow>, seg: &Seg, class: TcpClass, now: u64, out: &mut Flow) -> Step {
    let Some((old, state)) = flow.and_then(|f| f.state().map(|s| (f, s))) else {
        return match class {
            TcpClass::Syn => passive_open(seg, now, out),
            _ => Step::Invalid(Invalid::NoFlow),
        };
    };
    match class {
        TcpClass::Syn => match state {
            TcpState::SynRcvd if seg.seq == old.peer_isn => {
                *out = *old;
                store(out, state, now, Event::SynRetransmit)
            }
            TcpState::SynSent => {
                // Simultaneous open: both sent SYNs.
                *out = *old;
                out.peer_isn = seg.seq;
                out.peer_next = seg.end();
                store_entered(out, TcpState::SynRcvd, now)
            }
            TcpState::TimeWait if seq_after(seg.seq, old.peer_next) => {
                passive_open(seg, now, out);
                store(out, TcpState::SynRcvd, now, Event::Reopened)
            }
            _ => Step::Invalid(Invalid::UnexpectedSyn),
        },
        TcpClass::SynAck => match state {
            TcpState::SynSent | TcpState::SynRcvd if seg.ack == old.host_isn.wrapping_add(1) => {
                *out = *old;
                out.peer_isn = seg.seq;
                out.peer_next = seg.end();
                store_entered(out, TcpState::Established, now)
            }
            TcpState::Established if seg.seq == old.peer_isn => {
                // A retransmitted SYN-ACK: our ACK was lost.
                *out = *old;
                store(out, state, now, Event::SynRetransmit)
            }
            _ => Step::Invalid(Invalid::BadSynAck),
        },
        TcpClass::Rst => {
            let acceptable = match state {
                // An RST answering our SYN must acknowledge it.
                TcpState::SynSent => seg.flags.has(TcpFlags::ACK) && seg.ack == old.host_isn.wrapping_add(1),
                _ => rst_acceptable(old, seg),
            };
            if acceptable {
                Step::Remove(Event::Reset)
            } else {
                Step::Invalid(Invalid::RstOutOfWindow)
            }
        }
        TcpClass::Ack | TcpClass::Fin => ingress_ack(old, state, seg, class, now, out),
        TcpClass::Other => Step::Invalid(Invalid::BadFlags),
    }
}

/// The flow a valid cookie ACK opens (syncookie policy). The SYN was
/// answered from XDP and nothing was kept, so the ACK alone tells the
/// handshake: the host's ISN (the cookie) is ack - 1, the peer's seq - 1.
/// `wscale` is the scale the cookie SYN-ACK offered.
pub fn cookie_established(seg: &Seg, wscale: u8, now: u64, out: &mut Flow) -> Step {
    *out = new_flow(now);
    out.host_isn = seg.ack.wrapping_sub(1);
    out.host_next = seg.ack;
    out.peer_isn = seg.seq.wrapping_sub(1);
    out.peer_next = seg.seq;
    out.host_wscale = wscale;
    out.host_window = crate::syncookie::SYN_ACK_WINDOW >> host_wscale(out);
    out.flags = Flow::HOST_SEQ_KNOWN;
    note_peer_segment(out, seg);
    store_entered(out, TcpState::Established, now)
}

fn passive_open(seg: &Seg, now: u64, out: &mut Flow) -> Step {
    *out = new_flow(now);
    out.peer_isn = seg.seq;
    out.peer_next = seg.end();
    store_entered(out, TcpState::SynRcvd, now)
}

/// An ACK or FIN (with ACK) from the peer on a known flow.
fn ingress_ack(old: &Flow, state: TcpState, seg: &Seg, class: TcpClass, now: u64, out: &mut Flow) -> Step {
    if state == TcpState::SynSent {
        // The host's SYN was not answered with a SYN-ACK.
        return Step::Invalid(Invalid::BadHandshakeAck);
    }
    if state == TcpState::SynRcvd {
        // The handshake's final ACK: ack = K + 1, K from the host's SYN-ACK.
        let answered = old.has(Flow::HOST_SEQ_KNOWN);
        if (answered && seg.ack != old.host_isn.wrapping_add(1))
            || (!answered && old.has(Flow::AWAIT_SYN_ACK))
        {
            return Step::Invalid(Invalid::BadHandshakeAck);
        }
    } else if !ack_acceptable(old, seg.ack) {
        return Step::Invalid(Invalid::AckNotSent);
    }
    let fin = class == TcpClass::Fin;
    let duplicate_fin = fin && !seq_after(seg.end(), old.peer_next);
    let our_fin_acked = acks_host_fin(old, seg.ack);
    let next = match state {
        TcpState::SynRcvd if fin => TcpState::CloseWait,
        TcpState::SynRcvd => TcpState::Established,
        TcpState::Established if fin => TcpState::CloseWait,
        TcpState::FinWait1 if fin && our_fin_acked => TcpState::TimeWait,
        TcpState::FinWait1 if fin => TcpState::Closing,
        TcpState::FinWait1 if our_fin_acked => TcpState::FinWait2,
        TcpState::FinWait2 if fin => TcpState::TimeWait,
        TcpState::Closing if our_fin_acked => TcpState::TimeWait,
        TcpState::LastAck if our_fin_acked => TcpState::Closed,
        other => other,
    };
    if next == TcpState::Closed {
        return Step::Remove(Event::Entered(TcpState::Closed));
    }
    *out = *old;
    note_peer_segment(out, seg);
    if next != state {
        return store_entered(out, next, now);
    }
    let event = if duplicate_fin {
        Event::FinRetransmit
    } else {
        Event::NoChange
    };
    store(out, state, now, event)
}
