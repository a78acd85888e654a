//! The embedded eBPF object: loading it, with clear errors.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, MapError, MapInfo, MapType},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use tcp_guard_common::{
    flow::FlowKey,
    maps,
    policy::{CountHash, GuardConfig},
    programs,
};

use crate::settings::Settings;

/// The eBPF object built by build.rs from `tcp-guard-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp-guard-ebpf.o"));

/// The toolchain build.rs used for [`OBJECT`].
pub const EBPF_TOOLCHAIN: &str = env!("TCP_GUARD_EBPF_TOOLCHAIN");

/// Every map the programs share with the controller, pinned under the
/// instance directory (the aya-log ring is not: it is per daemon).
pub const PINNED_MAPS: &[&str] = &[
    maps::STATS,
    maps::FLOWS,
    maps::EXPIRED,
    maps::CONFIG,
    maps::ATTACK,
    maps::COUNTS,
    maps::COUNT_HASH,
    maps::RATE,
    maps::ALLOW,
    maps::BLOCK,
    maps::LISTS_IN_USE,
    maps::VERIFIED_BITS,
    maps::VERIFIED_GEN,
    maps::CHALLENGE,
    maps::OFFENDERS,
    maps::SYN_SOURCES,
    maps::LISTENERS,
    maps::LISTENER_LIMITS,
    maps::HEARTBEAT,
    maps::PORT_POLICY,
    maps::PORT_CONFIGS,
    maps::EVENTS,
];

/// Opens the object, sizes its tables, loads its programs into the kernel
/// (not attached) and writes the live configuration.
///
/// `log_level` is the most verbose level the kernel side may emit through
/// aya-log; records above it cost the program one comparison. With
/// `pin_dir`, every map in [`PINNED_MAPS`] is taken from its pin there if a
/// previous instance left one (its size then stays), else created and pinned.
pub fn load(log_level: log::LevelFilter, settings: &Settings, pin_dir: Option<&Path>) -> Result<Ebpf> {
    let mut ebpf = load_programs(log_level, settings, pin_dir)?;
    write_config(&mut ebpf, &settings.live)?;
    Ok(ebpf)
}

/// [`load`] without writing the configuration: a daemon taking over loads
/// with the pinned maps while its predecessor still runs on them, and
/// writes its own configuration only once that one has handed over.
pub fn load_programs(
    log_level: log::LevelFilter,
    settings: &Settings,
    pin_dir: Option<&Path>,
) -> Result<Ebpf> {
    let level = log_level as u8;
    let sizes = settings.tables;
    let mut loader = EbpfLoader::new();
    let pins: Vec<(&str, std::path::PathBuf)> = pin_dir
        .map(|dir| PINNED_MAPS.iter().map(|name| (*name, dir.join(name))).collect())
        .unwrap_or_default();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .override_global(aya_log::LEVEL, &level, true)
        .map_max_entries(maps::FLOWS, sizes.flows.saturating_add(sizes.half_open))
        .map_max_entries(
            maps::COUNTS,
            CountHash::entries(CountHash::slots_for(sizes.half_open)),
        )
        .load(OBJECT)
        .map_err(explain_load_error)
        .context("failed to load the tcp-guard eBPF object")?;
    init_count_hash(&mut ebpf, sizes.half_open)?;
    for name in [programs::XDP, programs::EXPIRE] {
        xdp_named(&mut ebpf, name)?
            .load()
            .map_err(explain_program_error)
            .with_context(|| format!("the kernel refused to load program {name}"))?;
    }
    tc_egress_program(&mut ebpf)?
        .load()
        .map_err(explain_program_error)
        .with_context(|| format!("the kernel refused to load program {}", programs::TC_EGRESS))?;
    Ok(ebpf)
}

/// Gives a new `COUNTS` its hash: a random seed, regions as large as the
/// array, and the half-open flows' share of `FLOWS` (an adopted one keeps
/// its hash, with which it was filled, and the share of the adopted table).
fn init_count_hash(ebpf: &mut Ebpf, half_open_max: u32) -> Result<()> {
    let entries = ebpf
        .map(maps::COUNTS)
        .context("map COUNTS missing from the eBPF object")?;
    let entries = match entries {
        aya::maps::Map::Array(data) => data.info().context("cannot read COUNTS's size")?.max_entries(),
        _ => anyhow::bail!("COUNTS is not an array"),
    };
    let mut hash: Array<_, CountHash> = ebpf
        .map_mut(maps::COUNT_HASH)
        .context("map COUNT_HASH missing from the eBPF object")?
        .try_into()
        .context("COUNT_HASH is not an array")?;
    if hash.get(&0, 0).context("cannot read COUNT_HASH")?.mask != 0 {
        return Ok(());
    }
    let slots = (entries.saturating_sub(CountHash::entries(0)) / 2).max(1);
    let mut seed = [0u8; 4];
    getrandom(&mut seed).context("cannot read random bytes for COUNT_HASH's seed")?;
    // Regions a power of two: the largest that fits the array.
    let slots = 1u32 << (31 - slots.leading_zeros());
    let value = CountHash {
        seed: u32::from_ne_bytes(seed),
        mask: slots - 1,
        half_open_max,
        _pad: 0,
    };
    hash.set(0, value, 0).context("cannot write COUNT_HASH")
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes the live configuration the programs read.
pub fn write_config(ebpf: &mut Ebpf, config: &GuardConfig) -> Result<()> {
    let mut map: Array<_, GuardConfig> = ebpf
        .map_mut(maps::CONFIG)
        .context("map CONFIG missing from the eBPF object")?
        .try_into()
        .context("CONFIG is not an array")?;
    map.set(0, *config, 0).context("cannot write CONFIG")
}

/// Maps the loader sizes from the settings (`tables.*`): adopted ones keep
/// the size they were made with.
const SIZED_BY_SETTINGS: &[&str] = &[maps::FLOWS, maps::COUNTS];

/// What a map holds, as the object defines it or the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl Shape {
    /// The first field in which `found` differs from `self`, what is
    /// expected, and what was found (capacity only if `sized`).
    fn mismatch(&self, found: &Shape, sized: bool) -> Option<(&'static str, String, String)> {
        let bytes = |n: u32| format!("{n} bytes");
        if self.map_type != found.map_type {
            return Some(("type", type_name(self.map_type), type_name(found.map_type)));
        }
        if self.key_size != found.key_size {
            return Some(("key size", bytes(self.key_size), bytes(found.key_size)));
        }
        if self.value_size != found.value_size {
            return Some(("value size", bytes(self.value_size), bytes(found.value_size)));
        }
        if sized && self.max_entries != found.max_entries {
            return Some((
                "max entries",
                self.max_entries.to_string(),
                found.max_entries.to_string(),
            ));
        }
        None
    }
}

fn type_name(map_type: u32) -> String {
    aya_obj::generated::bpf_map_type::try_from(map_type)
        .ok()
        .and_then(|t| MapType::try_from(t).ok())
        .map_or_else(|| format!("type {map_type}"), |t| format!("{t:?}"))
}

/// Refuses pinned maps in `dir` that do not hold what this build's programs
/// expect (type, key and value size, capacity): aya reuses a pinned map of
/// the same name as it finds it, and the programs would then read and write
/// it with the wrong layout. Maps not pinned yet are made by the loader.
pub fn check_pinned(iface: &str, dir: &Path) -> Result<()> {
    let object = aya_obj::Object::parse(OBJECT).context("cannot parse the embedded eBPF object")?;
    for name in PINNED_MAPS {
        let path = dir.join(name);
        let info = match MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot open pinned map {}", path.display())),
        };
        let defined = object
            .maps
            .get(*name)
            .with_context(|| format!("map {name} missing from the eBPF object"))?;
        let expected = Shape {
            map_type: defined.map_type(),
            key_size: defined.key_size(),
            value_size: defined.value_size(),
            max_entries: defined.max_entries(),
        };
        let found = Shape {
            map_type: info
                .map_type()
                .with_context(|| format!("{} is of a map type aya does not know", path.display()))?
                as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if let Some((field, want, have)) = expected.mismatch(&found, !SIZED_BY_SETTINGS.contains(name)) {
            bail!(
                "the pinned map {} does not fit this tcp-guard: its {field} is {have}, this tcp-guard's {name} \
                 needs {want} (left by an incompatible version); run `tcp-guard detach --iface {iface}` \
                 (its flows and blocks are dropped), then start again",
                path.display()
            );
        }
    }
    Ok(())
}

/// The program that removes one idle flow (run with BPF_PROG_TEST_RUN).
pub fn expire_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    xdp_named(ebpf, programs::EXPIRE)
}

fn xdp_named<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

/// Asks the kernel to remove `key` if it is still idle past its timeout;
/// true if it was removed.
pub fn expire(program: &Xdp, key: &FlowKey) -> Result<bool> {
    // SAFETY: FlowKey is repr(C) plain data without padding holes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (key as *const FlowKey).cast::<u8>(),
            std::mem::size_of::<FlowKey>(),
        )
    };
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(bytes);
    let result = program.test_run(opts).context("running the expire program")?;
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    match result.return_value {
        XDP_DROP => Ok(true),
        XDP_PASS => Ok(false),
        other => anyhow::bail!("the expire program returned {other}"),
    }
}

/// The TC egress program of a loaded object.
pub fn tc_egress_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(programs::TC_EGRESS)
        .with_context(|| format!("program {} missing from the eBPF object", programs::TC_EGRESS))?
        .try_into()
        .with_context(|| format!("program {} is not a TC classifier", programs::TC_EGRESS))
}

/// Kernel ids of the programs a daemon attaches, by the label metrics give
/// them: their run-time figures are read by id.
pub fn attached_ids(ebpf: &Ebpf, egress: bool) -> Result<Vec<(&'static str, u32)>> {
    let mut named = vec![("xdp", programs::XDP)];
    if egress {
        named.push(("tc_egress", programs::TC_EGRESS));
    }
    named
        .into_iter()
        .map(|(label, name)| {
            let program = ebpf
                .program(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?;
            let info = program
                .info()
                .with_context(|| format!("cannot read the kernel's information on {name}"))?;
            Ok((label, info.id()))
        })
        .collect()
}

/// The XDP ingress program of a loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    xdp_named(ebpf, programs::XDP)
}

fn explain_load_error(error: EbpfError) -> anyhow::Error {
    match error {
        EbpfError::MapError(ref map_error) if is_permission_error(map_error) => {
            anyhow::Error::new(error).context("creating BPF maps needs root (CAP_BPF and CAP_NET_ADMIN)")
        }
        other => other.into(),
    }
}

fn is_permission_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether the verifier refused a call to one of the SYN-cookie helpers
/// (ids 204 to 207): "invalid func unknown#204" on kernels without them,
/// "unknown func bpf_tcp_raw_...#204" where the program type may not call them.
fn lacks_cookie_helpers(verifier_log: &str) -> bool {
    verifier_log.lines().any(|line| {
        line.contains("func")
            && (line.contains("syncookie")
                || ["#204", "#205", "#206", "#207"]
                    .iter()
                    .any(|id| line.contains(id)))
    })
}

/// Puts the verifier's log on its own lines, where an operator can read it.
/// (The verifier rejects with EACCES or EINVAL, so the errno alone says little.)
fn explain_program_error(error: ProgramError) -> anyhow::Error {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } if lacks_cookie_helpers(&verifier_log.to_string()) => anyhow::anyhow!(
            "BPF_PROG_LOAD failed: {io_error}: this kernel lacks the SYN-cookie helpers \
             (bpf_tcp_raw_gen_syncookie_ipv4/6, bpf_tcp_raw_check_syncookie_ipv4/6) tcp-guard's fast path \
             calls; they need Linux 6.0 or later built with CONFIG_SYN_COOKIES (and CONFIG_IPV6=y)\n\
             --- verifier log ---\n{verifier_log}\n--- end of verifier log ---"
        ),
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow::anyhow!(
                "BPF_PROG_LOAD failed: {io_error}\n--- verifier log ---\n{verifier_log}\n--- end of verifier log ---"
            )
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_is_defined_in_the_object() {
        let object = aya_obj::Object::parse(OBJECT).expect("parse");
        for name in PINNED_MAPS {
            assert!(object.maps.contains_key(*name), "{name} missing");
        }
    }

    #[test]
    fn a_pinned_map_must_match_its_definition_field_by_field() {
        let defined = Shape {
            map_type: MapType::Array as u32,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
        };
        assert_eq!(defined.mismatch(&defined, true), None);
        let field = |found: Shape, sized: bool| defined.mismatch(&found, sized);
        assert_eq!(
            field(
                Shape {
                    map_type: MapType::Hash as u32,
                    ..defined
                },
                true
            ),
            Some(("type", "Array".to_string(), "Hash".to_string()))
        );
        assert_eq!(
            field(
                Shape {
                    value_size: 4,
                    ..defined
                },
                true
            ),
            Some(("value size", "8 bytes".to_string(), "4 bytes".to_string()))
        );
        assert_eq!(
            field(
                Shape {
                    key_size: 8,
                    ..defined
                },
                true
            ),
            Some(("key size", "4 bytes".to_string(), "8 bytes".to_string()))
        );
        let bigger = Shape {
            max_entries: 2,
            ..defined
        };
        assert_eq!(
            field(bigger, true),
            Some(("max entries", "1".to_string(), "2".to_string()))
        );
        assert_eq!(
            field(bigger, false),
            None,
            "tables sized by the settings keep theirs"
        );
    }

    #[test]
    fn missing_cookie_helpers_are_recognised_in_the_verifier_log() {
        assert!(lacks_cookie_helpers(
            "123: (85) call unknown#204\ninvalid func unknown#204\n"
        ));
        assert!(lacks_cookie_helpers(
            "unknown func bpf_tcp_raw_check_syncookie_ipv6#207\n"
        ));
        assert!(!lacks_cookie_helpers("R1 offset is outside of the packet\n"));
        assert!(!lacks_cookie_helpers(
            "call bpf_map_lookup_elem#1\ninvalid access to map value\n"
        ));
    }
}
