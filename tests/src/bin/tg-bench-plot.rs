//! `tg-bench-plot`: redraws the flood benchmark's figure (PNG and SVG) from
//! a results JSON that `tg-bench-flood` wrote, without running anything.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use tcp_guard_tests::flood_bench;

#[derive(Parser)]
#[command(about = "Redraw the flood benchmark's figure (PNG and SVG) from its results JSON")]
struct Args {
    /// The results JSON, e.g. bench/results/flood-20261128T115117Z.json.
    #[arg(long)]
    json: PathBuf,
    /// Where the figure goes; default: beside the JSON, same name.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    if let Err(e) = redraw(&Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn redraw(args: &Args) -> Result<()> {
    let (doc, runs) = flood_bench::read_results(&args.json)?;
    let base = match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.join(args.json.file_stem().unwrap_or_default())
        }
        None => args.json.with_extension(""),
    };
    let written = flood_bench::plot(
        &runs,
        &flood_bench::rates_of(&runs),
        &flood_bench::subtitle(&doc),
        &base,
    )?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
