//! Fuzzing of the command line (the binary's tests): random argument vectors
//! built from the real `Cli` (its subcommands, flags and the values they
//! take) mixed with random text and bytes. Parsing never panics, what it
//! accepts passes the value checks, and a refused value gets an error that
//! names its option.
//!
//! CI runs these as ordinary tests; the case counts keep them short in a
//! debug build, and `PROPTEST_CASES=100000` runs every property longer.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStringExt,
    path::Path,
};

use clap::{
    CommandFactory, Parser,
    error::{ContextKind, ContextValue, ErrorKind},
};
use proptest::prelude::*;
use tcp_guard::instance::valid_name;

use super::{
    Cli, Command, LimitsAction, ListAction, MAX_TABLE_SIZE, Settings, parse_table_size, parse_timeout,
    parse_ttl,
};

/// `cases` unless PROPTEST_CASES asks for another count.
fn bounded(cases: u32) -> ProptestConfig {
    let config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        config
    } else {
        ProptestConfig { cases, ..config }
    }
}

/// One subcommand as typed: its words (`limits set`), and the options it
/// takes, its own and the global ones.
#[derive(Clone, Debug)]
struct Form {
    words: Vec<String>,
    /// `(long name, short name, takes a value)`.
    options: Vec<(String, Option<char>, bool)>,
    /// It takes positional arguments.
    positionals: bool,
    /// Ids of the arguments it cannot be used without.
    required: Vec<String>,
}

fn forms() -> Vec<Form> {
    fn walk(
        command: &clap::Command,
        words: Vec<String>,
        globals: &[(String, Option<char>, bool)],
        out: &mut Vec<Form>,
    ) {
        let mut form = Form {
            words: words.clone(),
            options: globals.to_vec(),
            positionals: false,
            required: Vec::new(),
        };
        for arg in command.get_arguments() {
            let id = arg.get_id().to_string();
            if arg.is_positional() {
                form.positionals = true;
            } else if let Some(long) = arg.get_long() {
                form.options
                    .push((long.to_string(), arg.get_short(), arg.get_action().takes_values()));
            }
            if arg.is_required_set() {
                form.required.push(id);
            }
        }
        for sub in command.get_subcommands() {
            let mut words = words.clone();
            words.push(sub.get_name().to_string());
            walk(sub, words, globals, out);
        }
        out.push(form);
    }
    let cli = Cli::command();
    let globals: Vec<_> = cli
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| {
            Some((
                a.get_long()?.to_string(),
                a.get_short(),
                a.get_action().takes_values(),
            ))
        })
        .collect();
    let mut forms = Vec::new();
    walk(&cli, Vec::new(), &globals, &mut forms);
    forms
}

/// Values the options and positionals take, good and bad, and words clap
/// itself reads.
const VALUES: &[&str] = &[
    "",
    "-",
    "--",
    "=",
    "eth0",
    "lo",
    ".",
    "..",
    "/tmp/x",
    "eth0:1",
    "a b",
    "ethernet-123456",
    "ethernet-1234567",
    "0",
    "1",
    "64Ki",
    "16Mi",
    "16777217",
    "4294967296",
    "-1",
    "1.5",
    "syn_rcvd=30s",
    "SYN-RECV=30s",
    "closed=1s",
    "established=0",
    "time_wait=1500ms",
    "syn_rcvd=18446744073709552s",
    "limits.syn_rate=5",
    "tables.max_flows=0",
    "10.0.0.0/8",
    "10.0.0.1/8",
    "2001:2::/48",
    "1.2.3.4/33",
    "10m",
    "127.0.0.1:9966",
    "[::1]:99999",
    "bash",
    "native",
    "skb",
    "auto",
    "ESTAB",
    "--help",
    "-h",
    "--version",
    "-V",
    "help",
    "é",
    "\u{202e}",
];

/// One piece of a command line: an option (with a value if it takes one),
/// a value, or random text or bytes.
fn piece(form: &Form) -> impl Strategy<Value = Vec<OsString>> + use<> {
    let value = || prop::sample::select(VALUES).prop_map(OsString::from);
    let option = (prop::sample::select(form.options.clone()), value(), 0..3).prop_map(
        |((long, short, takes), value, spelling)| match (takes, spelling, short) {
            (false, 0, Some(short)) => vec![format!("-{short}").into()],
            (false, _, _) => vec![format!("--{long}").into()],
            (true, 0, Some(short)) => vec![format!("-{short}").into(), value],
            (true, 1, _) => {
                let mut joined = OsString::from(format!("--{long}="));
                joined.push(value);
                vec![joined]
            }
            (true, _, _) => vec![format!("--{long}").into(), value],
        },
    );
    let positional = if form.positionals { 3 } else { 1 };
    prop_oneof![
        6 => option,
        positional => value().prop_map(|v| vec![v]),
        1 => any::<String>().prop_map(|s| vec![s.into()]),
        1 => prop::collection::vec(any::<u8>(), 0..6).prop_map(|b| vec![OsString::from_vec(b)]),
    ]
}

/// A command line: a subcommand's words (sometimes cut short), then pieces.
fn argv() -> impl Strategy<Value = Vec<OsString>> {
    prop::sample::select(forms()).prop_flat_map(|form| {
        let words = form.words.len();
        (
            Just(form.words.clone()),
            prop_oneof![9 => Just(words), 1 => 0..=words],
            prop::collection::vec(piece(&form), 0..6),
        )
            .prop_map(|(words, keep, pieces)| {
                let mut argv: Vec<OsString> = vec!["tcp-guard".into()];
                argv.extend(words.into_iter().take(keep).map(OsString::from));
                argv.extend(pieces.into_iter().flatten());
                argv
            })
    })
}

/// The checked values a parsed command line holds, by option.
fn checked_values(cli: &Cli) -> Vec<(&'static str, String)> {
    let mut values = Vec::new();
    let target = |iface: &Option<String>| iface.iter().map(|i| ("iface", i.clone())).collect::<Vec<_>>();
    match &cli.command {
        Command::Run(args) => {
            values.push(("iface", args.iface.clone()));
            values.extend(args.max_half_open.map(|n| ("max-half-open", n.to_string())));
            values.extend(args.max_flows.map(|n| ("max-flows", n.to_string())));
            values.extend(args.timeouts.iter().map(|t| ("timeout", t.clone())));
        }
        Command::Detach { iface } => values.push(("iface", iface.clone())),
        Command::Stats { target: t, .. }
        | Command::Flows { target: t, .. }
        | Command::Reload { target: t, .. }
        | Command::Top { target: t }
        | Command::Limits {
            action: LimitsAction::Show { target: t, .. } | LimitsAction::Set { target: t, .. },
        }
        | Command::Block {
            action: ListAction::Del { target: t, .. } | ListAction::List { target: t, .. },
        }
        | Command::Allow {
            action: ListAction::Del { target: t, .. } | ListAction::List { target: t, .. },
        } => values.extend(target(&t.iface)),
        Command::Block {
            action: ListAction::Add { target: t, ttl, .. },
        }
        | Command::Allow {
            action: ListAction::Add { target: t, ttl, .. },
        } => {
            values.extend(target(&t.iface));
            values.extend(ttl.map(|ttl| ("ttl", ttl.as_nanos().to_string())));
        }
        Command::Check(_) | Command::Status { .. } | Command::Completions { .. } | Command::Man => {}
    }
    values
}

/// What parsing accepted passes the checks the value parsers make: an
/// interface name is one directory under the pin root and fits the kernel's
/// limit, table sizes and block TTLs are in range, timeouts are settings
/// that apply.
fn check_accepted(cli: &Cli) {
    for (option, value) in checked_values(cli) {
        match option {
            "iface" => {
                let dir = tcp_guard::instance::dir(&value);
                assert!(
                    value.len() < libc::IFNAMSIZ
                        && dir.parent() == Some(Path::new(tcp_guard::instance::ROOT))
                        && dir.file_name() == Some(OsStr::new(&value)),
                    "--iface {value:?} is no interface name: it names {}",
                    dir.display()
                );
            }
            "max-half-open" | "max-flows" => {
                let n: u32 = value.parse().expect("a count");
                assert!((1..=MAX_TABLE_SIZE).contains(&n), "--{option} {n}");
            }
            "ttl" => {
                let ns: u128 = value.parse().expect("nanoseconds");
                assert!(
                    (1_000_000_000..=365 * 24 * 3600 * 1_000_000_000).contains(&ns),
                    "--ttl {ns}ns"
                );
            }
            "timeout" => Settings::default()
                .apply(std::slice::from_ref(&value), false)
                .unwrap_or_else(|e| panic!("--timeout gave {value:?}, which does not apply: {e:#}")),
            other => unreachable!("{other} is not checked"),
        }
    }
}

/// The options whose values the fuzzing checks.
const CHECKED: &[&str] = &["iface", "max-half-open", "max-flows", "timeout", "ttl"];

/// What the check of `option`'s value makes of a good one, or why it refuses.
fn check(option: &str, value: &str) -> Result<String, String> {
    match option {
        "iface" => valid_name(value).map_err(|e| e.to_string()),
        "max-half-open" | "max-flows" => parse_table_size(value).map(|n| n.to_string()),
        "timeout" => parse_timeout(value),
        "ttl" => parse_ttl(value).map(|ttl| ttl.as_nanos().to_string()),
        other => unreachable!("{other} is not checked"),
    }
}

/// A value for `option`: near its edges, or anything.
fn value_for(option: &str) -> BoxedStrategy<String> {
    let anything = prop_oneof![
        prop::sample::select(VALUES).prop_map(str::to_string),
        any::<String>(),
    ];
    let near = match option {
        "iface" => prop_oneof![
            "[a-z0-9._:/ \t\u{a0}é-]{0,18}",
            prop::sample::select(vec!["", ".", "..", "...", "a/..", "x\0y", "ëëëëëëëë", "ëëëëëëëx"])
                .prop_map(str::to_string),
        ]
        .boxed(),
        "timeout" => {
            let states: Vec<String> = tcp_guard_common::flow::TcpState::ALL
                .iter()
                .flat_map(|s| {
                    [
                        s.as_str().to_string(),
                        s.ss_name().to_string(),
                        s.ss_name().to_lowercase(),
                    ]
                })
                .chain(["", "syn", "SYN_RECV "].map(str::to_string))
                .collect();
            let durations = prop::sample::select(vec![
                "",
                "0",
                "0s",
                "1s",
                "999ms",
                "1500ms",
                "30s",
                "1m",
                "12h",
                "2m 7s",
                "30days",
                "31days",
                "1h 1ms",
                "18446744073709552s",
                "5",
                "x",
                "=1s",
            ]);
            (prop::sample::select(states), durations)
                .prop_map(|(state, duration)| format!("{state}={duration}"))
                .boxed()
        }
        "ttl" => prop_oneof![
            prop::sample::select(vec![
                "",
                "0",
                "999ms",
                "1s",
                "10m",
                "2h",
                "365days",
                "366days",
                "365days 1ns",
                "585years",
                "600years",
                "18446744073709551615ns",
                "1.5s",
            ])
            .prop_map(str::to_string),
            (
                any::<u32>(),
                prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "w", "y"])
            )
                .prop_map(|(n, unit)| format!("{n}{unit}")),
        ]
        .boxed(),
        _ => prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (
                0u64..=64,
                prop::sample::select(vec!["", "k", "K", "Ki", "Mi", "M", "Gi", "G", "x"])
            )
                .prop_map(|(n, unit)| format!("{n}{unit}")),
            prop::sample::select(vec![
                "16777216",
                "16777217",
                "16Mi",
                "4294967296",
                "-1",
                "+1",
                " 1",
                "0x10"
            ])
            .prop_map(str::to_string),
        ]
        .boxed(),
    };
    prop_oneof![3 => near, 1 => anything].boxed()
}

/// A command line that is good but for `option`'s value: a subcommand that
/// takes the option, with what else it requires.
fn with_option() -> impl Strategy<Value = (Vec<String>, &'static str, String, bool)> {
    let cases: Vec<(Form, &'static str)> = forms()
        .into_iter()
        .flat_map(|form| {
            CHECKED
                .iter()
                .filter(|option| form.options.iter().any(|(long, _, _)| long == *option))
                .map(|option| (form.clone(), *option))
                .collect::<Vec<_>>()
        })
        .collect();
    prop::sample::select(cases).prop_flat_map(|(form, option)| {
        let mut argv: Vec<String> = std::iter::once("tcp-guard".to_string())
            .chain(form.words.iter().cloned())
            .collect();
        for id in form.required.iter().filter(|id| id.as_str() != option) {
            let good = match id.as_str() {
                "iface" => "--iface=eth0",
                "assignments" => "limits.syn_rate=5",
                "cidr" => "10.0.0.0/8",
                "shell" => "bash",
                other => panic!(
                    "the fuzzing needs a good value for {other}, which {:?} requires",
                    form.words
                ),
            };
            argv.push(good.to_string());
        }
        (Just(argv), Just(option), value_for(option), any::<bool>())
    })
}

proptest! {
    #![proptest_config(bounded(8000))]

    #[test]
    fn random_command_lines_parse_or_are_refused(argv in argv()) {
        match Cli::try_parse_from(&argv) {
            Ok(cli) => check_accepted(&cli),
            Err(error) => {
                // A refused value names the option or positional it was for.
                let message = error.render().to_string();
                if matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
                    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
                        panic!("{message}: names no argument");
                    };
                    prop_assert!(message.contains(arg.as_str()), "{}", message);
                }
            }
        }
    }

    #[test]
    fn option_values_are_checked_and_refusals_name_the_option(
        (mut argv, option, value, separate) in with_option(),
    ) {
        // `--opt value` unless the value would read as an option of its own.
        if separate && !value.starts_with('-') {
            argv.extend([format!("--{option}"), value.clone()]);
        } else {
            argv.push(format!("--{option}={value}"));
        }
        match (check(option, &value), Cli::try_parse_from(&argv)) {
            (Ok(good), Ok(cli)) => {
                check_accepted(&cli);
                prop_assert!(checked_values(&cli).contains(&(option, good)), "{argv:?}");
            }
            (Err(why), Err(error)) => {
                let message = error.render().to_string();
                prop_assert_eq!(error.kind(), ErrorKind::ValueValidation, "{}", message);
                prop_assert!(message.contains(&format!("--{option}")), "{}", message);
                prop_assert!(message.contains(&why), "{}", message);
            }
            (expected, parsed) => {
                prop_assert!(false, "{argv:?}: the check gave {expected:?}, parsing {:?}", parsed.map(|_| ()));
            }
        }
    }
}

#[test]
fn the_command_definition_is_consistent() {
    Cli::command().debug_assert();
}

/// Each checked option is still there to fuzz (a rename would leave its
/// property with nothing to check).
#[test]
fn every_checked_option_is_taken_somewhere() {
    let forms = forms();
    for option in CHECKED {
        assert!(
            forms
                .iter()
                .any(|f| f.options.iter().any(|(long, _, takes)| long == option && *takes)),
            "no subcommand takes --{option}"
        );
    }
}

/// A TTL past u64 nanoseconds wrapped (600 years became about 15), and one
/// just short of it overflowed the expiry time; a year is the most.
#[test]
fn a_block_ttl_past_a_year_is_refused_naming_the_option() {
    for ttl in ["600years", "18446744073709551615ns", "366days", "0"] {
        let error = Cli::try_parse_from(["tcp-guard", "block", "add", "10.0.0.0/8", "--ttl", ttl])
            .err()
            .unwrap_or_else(|| panic!("--ttl {ttl} was accepted"))
            .render()
            .to_string();
        assert!(
            error.contains("for '--ttl <TTL>': must be from 1s to 365days; leave --ttl out"),
            "{error}"
        );
    }
}
