//! The host's listening sockets as the kernel reports them through
//! sock_diag (inet_diag over netlink): each listener's backlog, and how many
//! handshakes wait in its SYN queue. From them the daemon derives, per local
//! port, how many half-open connections the fast path may admit, so that
//! the real queue never fills, and when attack mode must start.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN, TCP_SYN_RECV},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use tcp_guard_common::policy::ListenerLimit;

/// What one dump found, per local port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// The smallest backlog of the port's listeners (several may share a
    /// port, on different addresses or with SO_REUSEPORT).
    pub backlog: BTreeMap<u16, u32>,
    /// Handshakes in the kernel's SYN queues for the port (SYN-RECV).
    pub syn_queue: BTreeMap<u16, u32>,
}

/// Dumps the TCP listeners and SYN-RECV request sockets of the calling
/// process's network namespace, IPv4 and IPv6.
pub fn read() -> Result<Ports> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("cannot open a sock_diag netlink socket")?;
    socket.bind_auto().context("cannot bind the sock_diag socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("cannot connect the sock_diag socket")?;
    let mut ports = Ports::default();
    for family in [AF_INET, AF_INET6] {
        dump(&socket, family, &mut ports)?;
    }
    Ok(ports)
}

fn dump(socket: &Socket, family: u8, ports: &mut Ports) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN | StateFlags::SYN_RECV,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("cannot send the sock_diag request")?;

    let mut received = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut received[..], 0)
            .context("cannot read the sock_diag answer")?;
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&received[offset..size])
                .context("cannot parse a sock_diag message")?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let header = &response.header;
                    let port = header.socket_id.source_port;
                    match header.state {
                        TCP_LISTEN => {
                            let backlog = ports.backlog.entry(port).or_insert(u32::MAX);
                            *backlog = (*backlog).min(header.send_queue);
                        }
                        TCP_SYN_RECV => *ports.syn_queue.entry(port).or_insert(0) += 1,
                        _ => {}
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => bail!("sock_diag refused the dump: {error:?}"),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// What the kernel holds of a listener's handshakes before it drops new
/// clients: its backlog, and with SYN cookies off three quarters of
/// `tcp_max_syn_backlog` (past that it drops peers it has not seen before).
pub fn capacity(backlog: u32, max_syn_backlog: u32, syncookies: u32) -> u32 {
    if syncookies == 0 {
        backlog.min(max_syn_backlog - max_syn_backlog / 4)
    } else {
        backlog
    }
}

/// The fast path's limits for a port whose listeners hold `capacity`
/// handshakes: attack mode from a quarter on, long before the queue can
/// fill. Where the kernel sends no cookies (`tcp_syncookies` 0), a full
/// queue turns new clients away, so the fast path also admits at most half
/// of it (the other half stays free for clients that pass attack mode);
/// elsewhere a full queue only makes the kernel answer with cookies, and a
/// limit would turn away clients the kernel itself would have served.
pub fn limit_for(capacity: u32, syncookies: u32) -> ListenerLimit {
    let half = (capacity / 2).max(1);
    ListenerLimit {
        half_open: if syncookies == 0 { half } else { 0 },
        enter_attack: (half / 2).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_off_leave_a_quarter_of_the_syn_backlog_to_known_peers() {
        assert_eq!(capacity(16, 128, 0), 16);
        assert_eq!(capacity(4096, 128, 0), 96);
        assert_eq!(capacity(4096, 128, 1), 4096);
    }

    #[test]
    fn attack_mode_starts_at_a_quarter_and_without_cookies_half_the_queue_stays_free() {
        assert_eq!(
            limit_for(16, 0),
            ListenerLimit {
                half_open: 8,
                enter_attack: 4
            }
        );
        assert_eq!(
            limit_for(16, 1),
            ListenerLimit {
                half_open: 0,
                enter_attack: 4
            },
            "the kernel answers what does not fit with cookies"
        );
        assert_eq!(
            limit_for(1, 0),
            ListenerLimit {
                half_open: 1,
                enter_attack: 1
            }
        );
        assert_eq!(
            limit_for(0, 0),
            ListenerLimit {
                half_open: 1,
                enter_attack: 1
            }
        );
    }
}
