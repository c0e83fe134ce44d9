//! Starting a program inside a Linux network namespace (one made by
//! `ip netns add NAME`, bound under `/run/netns`), optionally as another user.
//!
//! `nsenter --net` enters the namespace and then execs the program, so the
//! child's pid is the program's own (pid files and signals keep working).
//! Entering a namespace needs root; the user switch (`-S`/`-G`) happens
//! after entering, which `Command::uid` cannot do (it switches before any
//! pre-exec hook could call `setns`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `ip netns add NAME` binds namespace `NAME`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// A command running `program` in namespace `netns` (or in ours when
/// `None`), as `uid_gid` when given.
pub fn command_in(netns: Option<&str>, program: impl AsRef<OsStr>, uid_gid: Option<(u32, u32)>) -> Command {
    let Some(ns) = netns else {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = uid_gid {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        }
        return cmd;
    };
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()));
    if let Some((uid, gid)) = uid_gid {
        cmd.args(["-S", &uid.to_string(), "-G", &gid.to_string()]);
    }
    cmd.arg("--").arg(program);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_namespace_the_program_runs_directly() {
        let cmd = command_in(None, "/bin/true", None);
        assert_eq!(cmd.get_program(), "/bin/true");
        assert_eq!(cmd.get_args().count(), 0);
    }

    #[test]
    fn a_namespace_goes_through_nsenter_and_switches_user_after_entering() {
        let cmd = command_in(Some("sk3"), "/bin/true", Some((105, 111)));
        assert_eq!(cmd.get_program(), "nsenter");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["--net=/run/netns/sk3", "-S", "105", "-G", "111", "--", "/bin/true"]);
    }
}
