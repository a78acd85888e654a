//! Log lines for journald: when systemd connects stderr to the journal, each
//! line starts with its syslog priority (`<3>` error ... `<7>` debug, the
//! SD_* prefixes of sd-daemon(3)) and carries no timestamp (journald adds
//! its own).

use std::os::unix::fs::MetadataExt;

/// Whether stderr is the journal stream `$JOURNAL_STREAM` (`DEV:INODE`)
/// names. Comparing with stderr itself, as systemd.exec(5) asks, keeps the
/// plain format for a process that inherited the variable but logs
/// elsewhere (`tcp-guard run 2>file` from a service's shell).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stderr.dev(), stderr.ino()))
}

/// The SD_* prefix for a log level.
pub fn priority(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// `text` with `prefix` on every line: journald reads the priority per
/// line, and a multi-line message (a verifier log) must not drop to info.
pub fn prefix_lines(prefix: &str, text: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_carries_the_priority() {
        assert_eq!(
            prefix_lines(
                priority(log::Level::Error),
                "refused:\n--- verifier log ---\nR1 invalid"
            ),
            "<3>refused:\n<3>--- verifier log ---\n<3>R1 invalid\n"
        );
        assert_eq!(prefix_lines(priority(log::Level::Warn), "gone"), "<4>gone\n");
        assert_eq!(priority(log::Level::Info), "<6>");
        assert_eq!(priority(log::Level::Trace), "<7>");
    }
}
