//! `tg-bench-flood`, run by `cargo xtask bench flood`: the flood benchmark's
//! full plan; results in the given directory (JSON, Markdown, plots).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use tcp_guard_tests::flood_bench;

#[derive(Parser)]
#[command(about = "The flood benchmark: each defence against the same spoofed SYN flood, rates stepped up")]
struct Args {
    /// Where the results go.
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    if let Err(e) = bench(&Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn bench(args: &Args) -> Result<()> {
    let plan = flood_bench::Plan::full();
    let runs = flood_bench::run_plan(&plan)?;
    let written = flood_bench::write_results(&runs, &plan, &args.out, &flood_bench::stamp())?;
    println!("\n{}", flood_bench::markdown(&runs)?);
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
