//! `tcp-guard top`: a live view of one instance, redrawn every second from
//! its pinned maps. Plain terminal (80x24 is enough); q, Esc or Ctrl-C quits
//! and restores the terminal.

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
    policy::SYN_SAMPLE_EVERY,
    stats::{Counter, Stats},
};

use crate::{
    control::{Cidr, Instance, time_left},
    flows::{FlowTables, Gauges, monotonic_now_ns},
    settings::format_count,
    stats::{self as stats_file, Enforcement},
};

/// Seconds of SYN rate the sparkline shows.
const HISTORY: usize = 60;

/// Everything one frame shows.
struct View {
    iface: String,
    stats: Stats,
    /// Counters' change per second since the previous view.
    rates: Stats,
    gauges: Gauges,
    enforcement: Enforcement,
    blocks: Vec<(Cidr, Option<Duration>)>,
    top_half_open: Vec<(IpAddr, u64)>,
    /// Sampled SYNs per source so far, and the estimated SYN/s of the
    /// busiest since the previous view.
    sampled_syns: HashMap<IpAddr, u64>,
    top_syn_rate: Vec<(IpAddr, u64)>,
    syn_history: VecDeque<u64>,
}

fn read(
    instance: &Instance,
    iface: &str,
    previous: Option<(&View, Instant)>,
    history: &mut VecDeque<u64>,
) -> Result<View> {
    let stats = stats_file::read_pinned(&instance.dir().join(maps::STATS))?;
    let sampled_syns = instance.sampled_syns()?;
    let mut rates = Stats::default();
    let mut top_syn_rate = Vec::new();
    if let Some((before, then)) = previous {
        let secs = then.elapsed().as_secs_f64().max(0.001);
        let per_second = |now: u64, was: u64| (now.saturating_sub(was) as f64 / secs).round() as u64;
        for (rate, (now, was)) in rates
            .counters
            .iter_mut()
            .zip(stats.counters.iter().zip(before.stats.counters.iter()))
        {
            *rate = per_second(*now, *was);
        }
        top_syn_rate = sampled_syns
            .iter()
            .map(|(addr, syns)| {
                let was = before.sampled_syns.get(addr).copied().unwrap_or(0);
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
    let now = monotonic_now_ns();
    Ok(View {
        iface: iface.to_string(),
        stats,
        rates,
        gauges: FlowTables::open(instance.dir())?.gauges()?,
        enforcement: Enforcement::read(instance)?,
        blocks: instance
            .blocks()?
            .into_iter()
            .map(|(c, e)| (c, time_left(&e, now)))
            .collect(),
        top_half_open: instance.top_half_open_sources(5)?,
        sampled_syns,
        top_syn_rate,
        syn_history: history.clone(),
    })
}

pub fn run(iface: Option<&str>) -> Result<()> {
    let (iface, instance) = Instance::resolve(iface)?;
    let mut history = VecDeque::with_capacity(HISTORY);
    let mut previous = read(&instance, &iface, None, &mut history)?;
    let mut taken = Instant::now();
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = (|| -> Result<()> {
        loop {
            terminal.draw(|frame| draw(frame, &previous))?;
            let deadline = taken + Duration::from_secs(1);
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
            let view = read(&instance, &iface, Some((&previous, taken)), &mut history)?;
            taken = Instant::now();
            previous = view;
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
    let e = &v.enforcement;
    let attack = if e.attack.active != 0 {
        let secs = monotonic_now_ns().saturating_sub(e.attack.since_ns) / 1_000_000_000;
        format!("attack mode: ON ({}) {secs}s", e.attack.trigger_name())
            .red()
            .bold()
    } else {
        "attack mode: off".green()
    };
    // Which rules: `stats` says; the line has no room.
    let monitor = if e.config.monitor != 0 { " · MONITOR" } else { "" };
    Line::from(vec![
        format!("tcp-guard top · {} · ", v.iface).bold(),
        attack,
        format!(" · {}{monitor} · q quits", e.config.policy().as_str()).into(),
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
    let e = &v.enforcement;
    let limit = e.config.global_half_open;
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
        let cell = |s: &TcpState| format!("{:<11}{:>8}", s.ss_name(), v.gauges.per_state[*s as usize - 1]);
        let text = pair.iter().map(cell).collect::<Vec<_>>().join("   ");
        lines.push(Line::from(text));
    }
    lines.push(Line::from(format!(
        "tables  half-open {}/{}  flows {}/{}",
        v.gauges.half_open_entries,
        format_count(v.gauges.half_open_max.into()),
        v.gauges.flow_entries,
        format_count(v.gauges.flow_max.into())
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
        .filter(|c| v.rates.get(**c) > 0 || v.stats.get(**c) > 0)
        .map(|c| spread(&name(*c), &format!("{}/s", v.rates.get(*c)), width))
        .collect();
    if lines.is_empty() {
        lines.push(Line::from("none"));
    }
    // Which rules are monitored is in `stats`; the lines say what they hold back.
    let title = if v.enforcement.config.monitor != 0 {
        " drops · monitor "
    } else {
        " drops "
    };
    Paragraph::new(lines).block(Block::bordered().title(title))
}

fn sources_panel(v: &View, width: usize) -> Paragraph<'static> {
    let mut lines = vec![Line::from("by half-open flows").bold()];
    lines.extend(
        v.top_half_open
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
    let mut lines: Vec<Line> = v
        .blocks
        .iter()
        .map(|(cidr, left)| {
            let left = left.map_or("never".to_string(), |d| format!("{}s", d.as_secs()));
            spread(&cidr.to_string(), &left, width)
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from("none"));
    }
    Paragraph::new(lines).block(Block::bordered().title(format!(" blocked ({}) ", v.blocks.len())))
}
