//! Fuzzing of the settings parsers: `KEY=VALUE` assignments (`run --set`,
//! `limits set`) and TOML config files, from random text and from the real
//! keys with values at and past the ends of their ranges. Whatever the input,
//! the outcome is settings that pass their own checks and hold what was
//! asked, or an error that names the offending key.
//!
//! CI runs these as ordinary tests; the case counts keep them short in a
//! debug build, and `PROPTEST_CASES=100000` runs every property longer.

use proptest::prelude::*;
use toml::Value;

use super::{
    Cidr, GuardConfig, KEYS, Key, Kind, Policy, Settings, format_count, parse_count, parse_value, tests::load,
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

const WORDS: &[&str] = &[
    "",
    " ",
    "\"\"",
    "\"5\"",
    "=",
    "auto",
    "AUTO",
    "true",
    "false",
    "True",
    "yes",
    "1",
    "-0",
    "+5",
    "1.5",
    "1e3",
    "0x10",
    "NaN",
    "inf",
    "10s",
    "1h",
    "0",
    "0s",
    "1500ms",
    "2m 7s",
    "5days",
    "1.5s",
    "10 k",
    "10kb",
    "198.19.0.0/16",
    "2001:2::/48",
    "pass",
    "syncookie",
    "drop",
    "٣",
    "１２",
    "10ｋ",
    "ß",
    "\u{0}",
    "\u{202e}5",
];

const COUNT_UNITS: &[&str] = &["", "k", "K", "M", "G", "Ki", "Mi", "Gi", "KiB", " k"];

/// Duration units with their length in milliseconds.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ns", 0),
    ("us", 0),
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("min", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("days", 86_400_000),
    ("w", 604_800_000),
];

/// Numbers around the ends of the integer types the values pass through.
const EDGES: &[u64] = &[0, 1, u32::MAX as u64, 1 << 32, i64::MAX as u64, 1 << 63, u64::MAX];

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..=200).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(EDGES).prop_map(|n| n.to_string()),
        "[0-9]{20,40}",
    ]
}

/// A duration whose milliseconds overflow a u64 by a little: the first
/// numbers of each unit that do.
fn overflowing_duration() -> impl Strategy<Value = String> {
    (prop::sample::select(DURATION_UNITS), 0u64..2_000).prop_map(|((unit, ms), k)| {
        let n = u64::MAX
            .checked_div(ms)
            .map_or(u64::MAX, |n| n.saturating_add(1 + k));
        format!("{n}{unit}")
    })
}

fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(str::to_string),
        number(),
        (number(), prop::sample::select(COUNT_UNITS)).prop_map(|(n, u)| format!("{n}{u}")),
        (number(), prop::sample::select(DURATION_UNITS)).prop_map(|(n, (u, _))| format!("{n}{u}")),
        overflowing_duration(),
        any::<String>(),
    ]
}

/// Values at and just past each end of `key`'s range, in the forms it takes.
fn edges(key: &Key) -> Vec<String> {
    let counts = |min: u32, max: u32| {
        let (min, max) = (u64::from(min), u64::from(max));
        vec![
            min.to_string(),
            min.checked_sub(1)
                .map_or_else(|| "-1".to_string(), |n| n.to_string()),
            max.to_string(),
            format_count(max),
            (max + 1).to_string(),
            format_count(max + 1),
        ]
    };
    match key.kind {
        Kind::Count { min, max, .. } => counts(min, max),
        Kind::AutoOrCount { max, .. } => {
            let mut values = counts(0, max);
            values.extend(["auto", "\"auto\"", " auto ", "Auto"].map(str::to_string));
            values
        }
        Kind::Duration { min_ms, max_ms, .. } => {
            let human =
                |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
            let mut values = vec![
                format!("{min_ms}ms"),
                human(min_ms),
                format!("{}ms", min_ms.saturating_sub(1)),
                format!("{}ms", min_ms + 1),
                format!("{max_ms}ms"),
                human(max_ms),
                format!("{}ms", max_ms + 1),
                format!("{}s", max_ms / 1000 + 1),
            ];
            // The first of each unit whose milliseconds overflow a u64.
            values.extend(
                DURATION_UNITS
                    .iter()
                    .filter(|(_, ms)| *ms > 1)
                    .map(|(unit, ms)| format!("{}{unit}", u64::MAX / ms + 1)),
            );
            values
        }
        Kind::Policy => Policy::ALL.iter().map(|p| p.as_str().to_string()).collect(),
        Kind::Switch => ["true", "false", "TRUE", "0", "1"].map(str::to_string).to_vec(),
    }
}

/// A key name: mostly real, sometimes a near miss or anything at all.
fn key_name() -> impl Strategy<Value = String> {
    let real = prop::sample::select(KEYS.iter().map(|k| k.name).collect::<Vec<_>>());
    prop_oneof![
        8 => real.clone().prop_map(str::to_string),
        1 => real.clone().prop_map(|k| format!(" {k} ")),
        1 => real.prop_map(str::to_uppercase),
        1 => "(limits|attack|blocking|timeouts|tables|limit|)\\.[a-z_]{0,14}",
        1 => any::<String>(),
    ]
}

/// A value for `name`: an edge of its range if it is a real key, or anything.
fn value_for(name: &str) -> BoxedStrategy<String> {
    match KEYS.iter().find(|k| k.name == name.trim()) {
        Some(key) => prop_oneof![
            2 => prop::sample::select(edges(key)),
            1 => any_value(),
        ]
        .boxed(),
        None => any_value().boxed(),
    }
}

fn assignment() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => key_name()
            .prop_flat_map(|name| (value_for(&name), Just(name)))
            .prop_map(|(value, name)| format!("{name}={value}")),
        1 => any::<String>(),
    ]
}

/// `text` names `key`, as written or quoted.
fn names(text: &str, key: &str) -> bool {
    text.contains(key) || text.contains(&format!("{key:?}"))
}

fn check_names_one(message: &str, keys: &[String]) {
    assert!(
        keys.iter().any(|key| names(message, key)),
        "{message:?} names none of {keys:?}"
    );
}

/// `key` holds what `text` means, read independently of `parse_value` where
/// the meaning is a number: counts as counts, durations in full precision.
/// (A policy or switch is a word from a list; `parse_value` is that list.)
fn check_holds(settings: &Settings, key: &Key, text: &str) {
    let stored = u128::from((key.get)(settings));
    let text = text.trim().trim_matches('"');
    let meant = match key.kind {
        Kind::Policy | Kind::Switch => return,
        Kind::Count { .. } => parse_count(text).map(u128::from),
        Kind::AutoOrCount { .. } if text == "auto" => Some(GuardConfig::PER_PORT_AUTO.into()),
        Kind::AutoOrCount { .. } => parse_count(text).map(u128::from),
        Kind::Duration { millis, .. } => humantime::parse_duration(text).ok().map(|d| {
            if millis {
                d.as_millis()
            } else {
                d.as_millis() / 1000
            }
        }),
    };
    assert_eq!(
        meant,
        Some(stored),
        "{} = {text:?} was stored as {stored}",
        key.name
    );
}

/// Accepted settings are valid by every rule the code has: each value within
/// its key's range, the cross-key rules, and the `limits show --json` form
/// read back unchanged.
fn check_valid(settings: &Settings) {
    for key in KEYS {
        let value = (key.get)(settings);
        let within = match key.kind {
            Kind::Count { min, max, .. } => (u64::from(min)..=u64::from(max)).contains(&value),
            Kind::Duration {
                millis,
                min_ms,
                max_ms,
            } => {
                let ms = if millis {
                    Some(value)
                } else {
                    value.checked_mul(1000)
                };
                ms.is_some_and(|ms| (min_ms..=max_ms).contains(&ms))
            }
            Kind::Policy => u8::try_from(value).ok().and_then(Policy::from_u8).is_some(),
            Kind::Switch => value <= 1,
            Kind::AutoOrCount { max, .. } => {
                value <= u64::from(max) || value == u64::from(GuardConfig::PER_PORT_AUTO)
            }
        };
        assert!(within, "{} holds {value}, outside its range", key.name);
    }
    settings.validate().expect("accepted settings pass validate");
    let mut again = Settings::default();
    for (key, value) in settings.to_json().as_object().expect("an object") {
        let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
        again
            .set(key, &text)
            .unwrap_or_else(|e| panic!("{key} = {text} as shown does not read back: {e:#}"));
    }
    assert_eq!(&again, settings, "the shown settings read back differently");
}

/// Why `apply` must refuse, known before it runs.
#[derive(Debug)]
enum Refusal {
    /// An assignment without `=`.
    NotAnAssignment(String),
    /// Each of these keys (or sections) is unknown, fixed while running, or
    /// has a bad value; the error names one of them.
    Keys(Vec<String>),
    /// Each key is fine alone; these settings together break a rule.
    Combination(Box<Settings>),
}

/// What `apply` should make of `assignments`, from the keys one by one.
fn expect_apply(assignments: &[String], live_only: bool) -> Result<Settings, Refusal> {
    let mut settings = Settings::default();
    for assignment in assignments {
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(Refusal::NotAnAssignment(assignment.clone()));
        };
        let name = name.trim();
        let Some(key) = KEYS.iter().find(|k| k.name == name) else {
            return Err(Refusal::Keys(vec![name.to_string()]));
        };
        match parse_value(key, value) {
            Ok(parsed) if !(live_only && key.restart) => (key.set)(&mut settings, parsed),
            _ => return Err(Refusal::Keys(vec![name.to_string()])),
        }
    }
    match settings.validate() {
        Ok(()) => Ok(settings),
        Err(_) => Err(Refusal::Combination(Box::new(settings))),
    }
}

fn check_apply(assignments: &[String], live_only: bool) {
    let mut settings = Settings::default();
    let result = settings.apply(assignments, live_only);
    match (result, expect_apply(assignments, live_only)) {
        (Ok(()), Ok(expected)) => {
            assert_eq!(settings, expected);
            check_valid(&settings);
            // The last assignment of a key is the one that holds.
            for (i, assignment) in assignments.iter().enumerate() {
                let (name, value) = assignment.split_once('=').expect("accepted");
                let later = assignments[i + 1..]
                    .iter()
                    .any(|a| a.split_once('=').is_some_and(|(n, _)| n.trim() == name.trim()));
                if !later {
                    let key = KEYS.iter().find(|k| k.name == name.trim()).expect("accepted");
                    check_holds(&settings, key, value);
                }
            }
        }
        (Err(error), Err(refusal)) => {
            let message = format!("{error:#}");
            match refusal {
                Refusal::NotAnAssignment(text) => {
                    assert!(message.contains("expected KEY=VALUE"), "{message}");
                    assert!(names(&message, &text), "{message:?} does not quote {text:?}");
                }
                Refusal::Keys(keys) => check_names_one(&message, &keys),
                Refusal::Combination(settings) => {
                    let rule = settings.validate().expect_err("refused");
                    assert_eq!(message, format!("{rule:#}"));
                }
            }
        }
        (result, expected) => panic!("{assignments:?}: apply gave {result:?}, expected {expected:?}"),
    }
}

/// A TOML value for `name`: the forms a config file writes (strings,
/// integers, booleans) and the wrong types (floats, arrays, tables, dates).
fn toml_value(name: &str) -> impl Strategy<Value = Value> + use<> {
    let mut integers: Vec<i64> = KEYS
        .iter()
        .find(|k| k.name == name.trim())
        .map(|key| edges(key).iter().filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    integers.extend([-1, 0, 1, i64::MIN, i64::MAX]);
    prop_oneof![
        4 => value_for(name).prop_map(Value::String),
        3 => prop::sample::select(integers).prop_map(Value::Integer),
        1 => any::<i64>().prop_map(Value::Integer),
        1 => any::<bool>().prop_map(Value::Boolean),
        1 => any::<f64>().prop_map(Value::Float),
        1 => prop::collection::vec(any::<i64>().prop_map(Value::Integer), 0..3).prop_map(Value::Array),
        1 => prop::collection::btree_map("[a-z_]{1,8}", any::<i64>().prop_map(Value::Integer), 0..3)
            .prop_map(|m| Value::Table(m.into_iter().collect())),
        1 => Just(Value::Datetime("1979-05-27T07:32:00Z".parse().expect("a TOML datetime"))),
    ]
}

/// A config document: entries under their sections, some at the top level
/// (a key without a section, or a section that is not a table).
fn toml_document() -> impl Strategy<Value = String> {
    let entry = key_name().prop_flat_map(|name| (toml_value(&name), Just(name)));
    prop::collection::vec(entry, 0..8).prop_map(|entries| {
        let mut document = toml::Table::new();
        for (value, name) in entries {
            match name.split_once('.') {
                Some((section, key)) => {
                    if let Value::Table(table) = document
                        .entry(section)
                        .or_insert_with(|| Value::Table(toml::Table::new()))
                    {
                        table.insert(key.to_string(), value);
                    }
                }
                None => {
                    document.insert(name, value);
                }
            }
        }
        toml::to_string(&document).expect("a table serializes")
    })
}

/// What `load_file` must make of `text`, from the document's entries one by
/// one: the settings, or the keys (and sections) any of which the error may
/// name. None: not TOML at all.
fn expect_load(text: &str) -> Option<Result<Settings, Refusal>> {
    let document: toml::Table = text.parse().ok()?;
    let mut settings = Settings::default();
    let mut bad = Vec::new();
    for (section, entries) in &document {
        let Some(entries) = entries.as_table() else {
            bad.push(section.clone());
            continue;
        };
        if section == "lists" {
            for (name, value) in entries {
                let cidrs: Option<Vec<Cidr>> = value.as_array().and_then(|entries| {
                    entries
                        .iter()
                        .map(|e| e.as_str().and_then(|t| Cidr::parse(t).ok()))
                        .collect()
                });
                let list = match name.as_str() {
                    "allow" => &mut settings.lists.allow,
                    "block" => &mut settings.lists.block,
                    _ => {
                        bad.push(format!("lists.{name}"));
                        continue;
                    }
                };
                match cidrs {
                    Some(mut cidrs) => {
                        let mut seen = std::collections::HashSet::new();
                        cidrs.retain(|c| seen.insert(*c));
                        *list = cidrs;
                    }
                    None => bad.push(format!("lists.{name}")),
                }
            }
            continue;
        }
        if section == "access" {
            for (name, value) in entries {
                let key = format!("access.{name}");
                let valid = name == "monitor_group"
                    && value
                        .as_str()
                        .is_some_and(|group| settings.set(&key, group).is_ok());
                if !valid {
                    bad.push(key);
                }
            }
            continue;
        }
        if !KEYS.iter().any(|k| k.name.starts_with(&format!("{section}."))) {
            bad.push(format!("[{section}]"));
            continue;
        }
        for (name, value) in entries {
            let key = format!("{section}.{name}");
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Integer(i) => i.to_string(),
                Value::Boolean(b) => b.to_string(),
                _ => {
                    bad.push(key);
                    continue;
                }
            };
            if settings.set(&key, &text).is_err() {
                bad.push(key);
            }
        }
    }
    Some(if !bad.is_empty() {
        Err(Refusal::Keys(bad))
    } else if settings.validate().is_err() {
        Err(Refusal::Combination(Box::new(settings)))
    } else {
        Ok(settings)
    })
}

fn check_load(text: &str) {
    let result = load(text);
    match (result, expect_load(text)) {
        (Err(error), None) => {
            let message = format!("{error:#}");
            assert!(message.contains("is not valid TOML"), "{message}");
        }
        (Ok(settings), Some(Ok(expected))) => {
            assert_eq!(settings, expected);
            check_valid(&settings);
            let document: toml::Table = text.parse().expect("TOML");
            // The lists and the access group are compared whole above.
            for (section, entries) in document
                .iter()
                .filter(|(section, _)| !["lists", "access"].contains(&section.as_str()))
            {
                for (name, value) in entries.as_table().expect("sections") {
                    let key = KEYS
                        .iter()
                        .find(|k| k.name == format!("{section}.{name}"))
                        .expect("known");
                    let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                    check_holds(&settings, key, &text);
                }
            }
        }
        (Err(error), Some(Err(Refusal::Keys(bad)))) => check_names_one(&format!("{error:#}"), &bad),
        (Err(error), Some(Err(Refusal::Combination(settings)))) => {
            let message = format!("{error:#}");
            let rule = format!("{:#}", settings.validate().expect_err("refused"));
            assert!(message.ends_with(&rule), "{message:?} is not {rule:?}");
        }
        (result, expected) => panic!("{text:?}: load gave {result:?}, expected {expected:?}"),
    }
}

/// The example config with random edits: lines dropped, text spliced in.
fn edited_example() -> impl Strategy<Value = String> {
    let example = include_str!("../../../docs/config.example.toml");
    let lines: Vec<&'static str> = example.lines().collect();
    let splice = prop_oneof![
        any::<String>(),
        key_name()
            .prop_flat_map(|name| (value_for(&name), Just(name)))
            .prop_map(|(value, name)| {
                let key = name.rsplit('.').next().unwrap_or_default().to_string();
                format!("{key} = {value}")
            }),
        "\\[[a-z.]{0,12}\\]",
    ];
    let count = lines.len();
    prop::collection::vec((0..count, prop::option::of(splice)), 1..4).prop_map(move |edits| {
        let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for (at, edit) in edits {
            let at = at.min(lines.len().saturating_sub(1));
            match edit {
                Some(text) => lines.insert(at, text),
                None if !lines.is_empty() => {
                    lines.remove(at);
                }
                None => {}
            }
        }
        lines.join("\n")
    })
}

proptest! {
    #![proptest_config(bounded(10_000))]

    #[test]
    fn assignments_hold_or_name_the_key(
        assignments in prop::collection::vec(assignment(), 1..6),
        live_only in any::<bool>(),
    ) {
        check_apply(&assignments, live_only);
    }

    #[test]
    fn one_value_holds_or_names_the_key(
        (value, name) in key_name().prop_flat_map(|name| (value_for(&name), Just(name))),
        live_only in any::<bool>(),
    ) {
        check_apply(&[format!("{name}={value}")], live_only);
    }
}

proptest! {
    #![proptest_config(bounded(3000))]

    #[test]
    fn config_files_hold_or_name_the_key(text in toml_document()) {
        check_load(&text);
    }

    #[test]
    fn edited_example_files_hold_or_name_the_key(text in edited_example()) {
        check_load(&text);
    }

    #[test]
    fn any_text_as_a_config_file(text in any::<String>()) {
        check_load(&text);
    }
}
