//! Local accounts a test makes: a group, and a user who is a member of it,
//! named with the test process's pid. [`Account`]'s Drop removes both,
//! even when the test fails; [`sweep_leftovers`] removes those of dead runs.

use std::{
    fs,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use crate::lab::run;

/// Prefix of every group the tests make; their users' start with [`USER_PREFIX`].
pub const GROUP_PREFIX: &str = "tg-mg-";
pub const USER_PREFIX: &str = "tg-mu-";

/// A group and a system user in it (as a supplementary group: log-in
/// groups are how members get it), without a home or a shell.
pub struct Account {
    pub group: String,
    pub user: String,
    pub uid: u32,
    /// The user's primary group, not [`Account::group`].
    pub gid: u32,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Account {
    pub fn create() -> Result<Account> {
        sweep_leftovers()?;
        let suffix = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let group = format!("{GROUP_PREFIX}{suffix}");
        let user = format!("{USER_PREFIX}{suffix}");
        run(Command::new("groupadd").args(["--system", &group]))?;
        // From here on Drop removes whatever was made.
        let mut account = Account {
            group,
            user,
            uid: 0,
            gid: 0,
        };
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--no-user-group",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            &account.group,
            &account.user,
        ]))?;
        let id = |flag: &str| -> Result<u32> {
            let out = run(Command::new("id").args([flag, &account.user]))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .with_context(|| format!("id {flag} {}", account.user))
        };
        account.uid = id("-u")?;
        account.gid = id("-g")?;
        Ok(account)
    }

    /// `setpriv` options that run a command as this user, with the groups
    /// a log-in would give it.
    pub fn setpriv(&self) -> Vec<String> {
        vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--init-groups".to_string(),
        ]
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        remove(&self.user, &self.group);
    }
}

/// Removes a user and a group, saying what failed (one may not exist).
fn remove(user: &str, group: &str) {
    if let Err(e) = run(Command::new("userdel").arg(user)) {
        eprintln!("account cleanup: {e:#}");
    }
    if let Err(e) = run(Command::new("groupdel").arg(group)) {
        eprintln!("account cleanup: {e:#}");
    }
}

/// Removes the accounts of test runs whose process is gone.
pub fn sweep_leftovers() -> Result<()> {
    let groups = fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    for name in groups.lines().filter_map(|l| l.split(':').next()) {
        let Some(suffix) = name.strip_prefix(GROUP_PREFIX) else {
            continue;
        };
        let alive = suffix
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            eprintln!("accounts: removing leftover group {name} and user {USER_PREFIX}{suffix}");
            remove(&format!("{USER_PREFIX}{suffix}"), name);
        }
    }
    Ok(())
}
