//! `tcp-guard top`: a live view of one instance, redrawn every second from
//! its pinned maps, or from what its daemon answers a reader without root.
//! Plain terminal (80x24 is enough); q, Esc or Ctrl-C quits and restores
//! the terminal.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Style, Stylize},
    text::Line,
    widgets::{Block, Paragraph, Sparkline},
};
use tcp_guard_common::{
    flow::TcpState,
    maps,
    policy::{BlockEntry, SYN_SAMPLE_EVERY},
    stats::{Counter, Stats},
};

use crate::{
    control::{Cidr, Instance, time_left},
    flows::{FlowTables, Gauges, monotonic_now_ns},
    monitor::Reader,
    settings::format_count,
    stats::{self as stats_file, Enforcement},
};

/// Seconds of SYN rate the sparkline shows.
const HISTORY: usize = 60;

/// What one frame is made from, as read at `taken_ns`.
pub struct TopSample {
    pub stats: Stats,
    pub gauges: Gauges,
    pub enforcement: Enforcement,
    pub blocks: Vec<(Cidr, BlockEntry)>,
    /// Sources with the most half-open flows, most first.
    pub top_half_open: Vec<(IpAddr, u64)>,
    /// Sampled SYNs per source so far: rates come from two samples.
    pub sampled_syns: HashMap<IpAddr, u64>,
    /// CLOCK_MONOTONIC ns when read: rates are over the time between two samples.
    pub taken_ns: u64,
}

impl TopSample {
    /// Reads it from the instance's pins (it walks the flow tables, the
    /// block list and the sampled SYN sources).
    pub fn read(instance: &Instance) -> Result<TopSample> {
        Ok(TopSample {
            stats: stats_file::read_pinned(&instance.dir().join(maps::STATS))?,
            gauges: FlowTables::open(instance.dir())?.gauges()?,
            enforcement: Enforcement::read(instance)?,
            blocks: instance.blocks()?,
            top_half_open: instance.top_half_open_sources(5)?,
            sampled_syns: instance.sampled_syns()?,
            taken_ns: monotonic_now_ns(),
        })
    }
}

/// Everything one frame shows.
struct View {
    iface: String,
    sample: TopSample,
    /// Counters' change per second since the previous sample.
    rates: Stats,
    /// The estimated SYN/s of the busiest sources since the previous sample.
    top_syn_rate: Vec<(IpAddr, u64)>,
    syn_history: VecDeque<u64>,
}

fn view(iface: &str, sample: TopSample, previous: Option<&View>, history: &mut VecDeque<u64>) -> View {
    let mut rates = Stats::default();
    let mut top_syn_rate = Vec::new();
    if let Some(before) = previous {
        let secs = (sample.taken_ns.saturating_sub(before.sample.taken_ns) as f64 / 1e9).max(0.001);
        let per_second = |now: u64, was: u64| (now.saturating_sub(was) as f64 / secs).round() as u64;
        for (rate, (now, was)) in rates.counters.iter_mut().zip(
            sample
                .stats
                .counters
                .iter()
                .zip(before.sample.stats.counters.iter()),
        ) {
            *rate = per_second(*now, *was);
        }
        top_syn_rate = sample
            .sampled_syns
            .iter()
            .map(|(addr, syns)| {
                let was = before.sample.sampled_syns.get(addr).copied().unwrap_or(0);
                (*addr, per_second(*syns, was) * SYN_SAMPLE_EVERY as u64)
            })
            .filter(|(_, rate)| *rate > 0)
            .collect();
        top_syn_rate.sort_by_key(|s| std::cmp::Reverse(s.1));
        top_syn_rate.truncate(5);
        history.push_back(rates.get(Counter::Syn));
        if history.len() > HISTORY {
            history.pop_front();
        }
    }
    View {
        iface: iface.to_string(),
        sample,
        rates,
        top_syn_rate,
        syn_history: history.clone(),
    }
}

/// Runs the live view; `reader` reads the pins, or asks the daemon.
pub fn run(iface: &str, reader: &Reader) -> Result<()> {
    let mut history = VecDeque::with_capacity(HISTORY);
    let mut previous = view(iface, reader.top()?, None, &mut history);
    let mut asked = Instant::now();
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = (|| -> Result<()> {
        loop {
            terminal.draw(|frame| draw(frame, &previous))?;
            let deadline = asked + Duration::from_secs(1);
            while Instant::now() < deadline {
                if event::poll(deadline.saturating_duration_since(Instant::now()))?
                    && let Event::Key(key) = event::read()?
                    && key.kind == KeyEventKind::Press
                    && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            }
            let sample = reader.top()?;
            asked = Instant::now();
            // The daemon answers from a walk at most about a second old: the
            // same one twice gives no rates.
            if sample.taken_ns != previous.sample.taken_ns {
                previous = view(iface, sample, Some(&previous), &mut history);
            }
        }
    })();
    ratatui::try_restore().context("cannot restore the terminal")?;
    result
}

fn draw(frame: &mut Frame, v: &View) {
    let [title, top, spark, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(10),
        Constraint::Length(4),
        Constraint::Min(7),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(title_line(v)), title);
    let [rates, state] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(top);
    frame.render_widget(rates_panel(v), rates);
    frame.render_widget(state_panel(v), state);
    draw_sparkline(frame, v, spark);
    let [drops, sources, blocked] = Layout::horizontal([
        Constraint::Percentage(34),
        Constraint::Percentage(36),
        Constraint::Percentage(30),
    ])
    .areas(bottom);
    frame.render_widget(drops_panel(v, inner_width(drops)), drops);
    frame.render_widget(sources_panel(v, inner_width(sources)), sources);
    frame.render_widget(blocked_panel(v, inner_width(blocked)), blocked);
}

/// Text columns inside a bordered panel.
fn inner_width(area: Rect) -> usize {
    area.width.saturating_sub(2) as usize
}

/// `left` and `right` on one line of `width` columns, `left` cut to fit.
fn spread(left: &str, right: &str, width: usize) -> Line<'static> {
    let room = width.saturating_sub(right.len() + 1);
    let left: String = left.chars().take(room).collect();
    Line::from(format!("{left:<room$} {right}"))
}

fn title_line(v: &View) -> Line<'static> {
    let e = &v.sample.enforcement;
    let attack = if e.attack.active != 0 {
        let secs = monotonic_now_ns().saturating_sub(e.attack.since_ns) / 1_000_000_000;
        format!("attack mode: ON ({}) {secs}s", e.attack.trigger_name())
            .red()
            .bold()
    } else {
        "attack mode: off".green()
    };
    // Which rules: `stats` says; the line has no room.
    let monitor = if e.monitor != 0 { " · MONITOR" } else { "" };
    Line::from(vec![
        format!("tcp-guard top · {} · ", v.iface).bold(),
        attack,
        format!(" · {}{monitor} · q quits", e.policy.as_str()).into(),
    ])
}

fn rates_panel(v: &View) -> Paragraph<'static> {
    let r = &v.rates;
    let dropped: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_drop())
        .map(|c| r.get(*c))
        .sum();
    let malformed: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_malformed())
        .map(|c| r.get(*c))
        .sum();
    let invalid: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_invalid())
        .map(|c| r.get(*c))
        .sum();
    let row = |name: &str, value: u64| Line::from(format!("{name:<11}{value:>10}"));
    Paragraph::new(vec![
        row("SYN", r.get(Counter::Syn)),
        row("SYN-ACK", r.get(Counter::SynAck)),
        row("ACK", r.get(Counter::Ack)),
        row("FIN", r.get(Counter::Fin)),
        row("RST", r.get(Counter::Rst)),
        row("dropped", dropped),
        row("invalid", invalid),
        Line::from(format!("{:<11}{malformed:>10}", "malformed")),
    ])
    .block(Block::bordered().title(" per second "))
}

fn state_panel(v: &View) -> Paragraph<'static> {
    let e = &v.sample.enforcement;
    let limit = e.half_open_limit;
    let filled = if limit == 0 {
        0
    } else {
        (e.half_open * 20 / limit as u64).min(20) as usize
    };
    let mut lines = vec![Line::from(vec![
        format!(
            "half-open {:>6} / {:<6}",
            e.half_open,
            if limit == 0 {
                "-".to_string()
            } else {
                format_count(limit.into())
            }
        )
        .into(),
        "█"
            .repeat(filled)
            .fg(if filled >= 15 { Color::Red } else { Color::Yellow }),
        "·".repeat(20 - filled).into(),
    ])];
    let states = [
        TcpState::Established,
        TcpState::SynRcvd,
        TcpState::SynSent,
        TcpState::TimeWait,
        TcpState::CloseWait,
        TcpState::FinWait1,
        TcpState::FinWait2,
    ];
    for pair in states.chunks(2) {
        let cell = |s: &TcpState| {
            format!(
                "{:<11}{:>8}",
                s.ss_name(),
                v.sample.gauges.per_state[*s as usize - 1]
            )
        };
        let text = pair.iter().map(cell).collect::<Vec<_>>().join("   ");
        lines.push(Line::from(text));
    }
    lines.push(Line::from(format!(
        "tables  half-open {}/{}  flows {}/{}",
        v.sample.gauges.half_open_entries,
        format_count(v.sample.gauges.half_open_max.into()),
        v.sample.gauges.flow_entries,
        format_count(v.sample.gauges.flow_max.into())
    )));
    Paragraph::new(lines).block(Block::bordered().title(" now "))
}

fn draw_sparkline(frame: &mut Frame, v: &View, area: Rect) {
    let max = v.syn_history.iter().copied().max().unwrap_or(0);
    let data: Vec<u64> = v.syn_history.iter().copied().collect();
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" SYN/s, last {HISTORY} s (max {max}) ")))
            .data(&data)
            .style(Style::default().fg(Color::Cyan)),
        area,
    );
}

/// The drops, and what rules in monitor mode would drop ("would ...").
fn drops_panel(v: &View, width: usize) -> Paragraph<'static> {
    let name = |c: Counter| match c.as_str().strip_prefix("would_drop_") {
        Some(reason) => format!("would {reason}"),
        None if c == Counter::WouldAnswerWithCookie => "would cookie".to_string(),
        None => c.as_str()["drop_".len()..].to_string(),
    };
    let mut lines: Vec<Line> = Counter::ALL
        .iter()
        .filter(|c| c.is_drop() || c.is_would_drop() || **c == Counter::WouldAnswerWithCookie)
        .filter(|c| v.rates.get(**c) > 0 || v.sample.stats.get(**c) > 0)
        .map(|c| spread(&name(*c), &format!("{}/s", v.rates.get(*c)), width))
        .collect();
    if lines.is_empty() {
        lines.push(Line::from("none"));
    }
    // Which rules are monitored is in `stats`; the lines say what they hold back.
    let title = if v.sample.enforcement.monitor != 0 {
        " drops · monitor "
    } else {
        " drops "
    };
    Paragraph::new(lines).block(Block::bordered().title(title))
}

fn sources_panel(v: &View, width: usize) -> Paragraph<'static> {
    let mut lines = vec![Line::from("by half-open flows").bold()];
    lines.extend(
        v.sample
            .top_half_open
            .iter()
            .take(3)
            .map(|(a, n)| spread(&a.to_string(), &n.to_string(), width)),
    );
    lines.push(Line::from("by SYN/s (sampled)").bold());
    lines.extend(
        v.top_syn_rate
            .iter()
            .take(3)
            .map(|(a, n)| spread(&a.to_string(), &n.to_string(), width)),
    );
    Paragraph::new(lines).block(Block::bordered().title(" top sources "))
}

fn blocked_panel(v: &View, width: usize) -> Paragraph<'static> {
    let now = monotonic_now_ns();
    let mut lines: Vec<Line> = v
        .sample
        .blocks
        .iter()
        .map(|(cidr, entry)| {
            let left = time_left(entry, now).map_or("never".to_string(), |d| format!("{}s", d.as_secs()));
            spread(&cidr.to_string(), &left, width)
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from("none"));
    }
    Paragraph::new(lines).block(Block::bordered().title(format!(" blocked ({}) ", v.sample.blocks.len())))
}
