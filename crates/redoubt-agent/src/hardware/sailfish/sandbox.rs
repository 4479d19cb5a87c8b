//! Sandboxed applications running now, found under the proc root, and stopping them.
//!
//! Sailjail launches an application as `sailjail -p APP.desktop /usr/bin/APP` (also
//! `-d APP`, `--desktop=APP`, or no option: then the desktop file is named after the
//! binary). The launcher asks sailjaild for the granted permissions and then *execs*
//! `/usr/bin/firejail … --profile=/etc/sailjail/permissions/PERM.permission … --
//! /usr/bin/APP`, which forks the sandboxed application and stays as its parent. So a
//! running sandbox names, in its own command line, every permission it was started
//! with: that is what the backend measures and what it stops when a permission is
//! revoked (a revocation only applies at the next launch). A `sailjail` process still
//! present is a launch in progress (typically waiting on the permission prompt).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

/// What a process is, as far as sandboxing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// The `sailjail` launcher of `app`, before it execs firejail.
    Sailjail {
        /// The application (desktop file name without `.desktop`).
        app: String,
    },
    /// A firejail sandbox started by sailjail.
    Firejail {
        /// The application, when the command line names it.
        app: Option<String>,
        /// The sailjail permissions it was started with (`Camera`, `Audio`, …).
        permissions: BTreeSet<String>,
    },
}

/// One process of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its id.
    pub pid: u32,
    /// Its parent, when `stat` is readable.
    pub ppid: Option<u32>,
    /// When it started (clock ticks after boot, `stat` field 22): with the pid, what
    /// tells it apart from a later process that reuses the pid.
    pub start: Option<u64>,
    /// Its real user id, when `status` is readable.
    pub uid: Option<u32>,
    /// What it is; `None` for any other process.
    pub launch: Option<Launch>,
    /// Part of Android AppSupport (the `aliendalvik` LXC container, or Android's own
    /// `system_server` seen from the host): apps in it are not governed by sailjail.
    pub android: bool,
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// The application name sailjaild uses for a desktop file name or path.
pub fn app_name(desktop: &str) -> String {
    let base = basename(desktop);
    base.strip_suffix(".desktop").unwrap_or(base).to_owned()
}

/// sailjail's short options that take an argument (`getopt` string `+hVvqd:p:s:a:o:t:m:`).
const SHORT_WITH_ARG: &[char] = &['d', 'p', 's', 'a', 'o', 't', 'm'];
/// Its long options that take an argument (`--profile` is in its usage text).
const LONG_WITH_ARG: &[&str] = &[
    "desktop",
    "profile",
    "section",
    "app",
    "output",
    "trace",
    "match-exec",
];

fn parse_sailjail(args: &[String]) -> Option<Launch> {
    let mut desktop: Option<String> = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            i += 1;
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            if LONG_WITH_ARG.contains(&name) {
                let value = match inline {
                    Some(v) => Some(v),
                    None => {
                        i += 1;
                        args.get(i).cloned()
                    }
                };
                if matches!(name, "desktop" | "profile") {
                    desktop = value;
                }
            }
            i += 1;
            continue;
        }
        if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            // Clustered flags, the last of which may take an argument (`-vp X`, `-pX`).
            for (at, c) in short.char_indices() {
                if SHORT_WITH_ARG.contains(&c) {
                    let rest = &short[at + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i).cloned()
                    } else {
                        Some(rest.to_owned())
                    };
                    if matches!(c, 'd' | 'p') {
                        desktop = value;
                    }
                    break;
                }
            }
            i += 1;
            continue;
        }
        // POSIX rules: the first operand ends the options.
        break;
    }
    let app = match desktop {
        Some(d) => app_name(&d),
        None => app_name(args.get(i)?),
    };
    (!app.is_empty()).then_some(Launch::Sailjail { app })
}

fn parse_firejail(args: &[String]) -> Option<Launch> {
    let mut permissions = BTreeSet::new();
    let mut desktop = None;
    let mut binary = None;
    let mut from_sailjail = false;
    for (i, a) in args.iter().enumerate() {
        if a == "--" {
            binary = args.get(i + 1).map(|b| app_name(b));
            break;
        }
        if let Some(profile) = a.strip_prefix("--profile=") {
            if let Some(perm) = basename(profile).strip_suffix(".permission") {
                from_sailjail = true;
                permissions.insert(perm.to_owned());
            }
        } else if let Some(path) = a.strip_prefix("--whitelist=")
            && path.ends_with(".desktop")
        {
            desktop = Some(app_name(path));
        }
    }
    from_sailjail.then_some(Launch::Firejail {
        app: desktop.or(binary),
        permissions,
    })
}

/// Classifies a command line (`argv`, as `/proc/PID/cmdline` holds it).
pub fn parse_cmdline(argv: &[String]) -> Option<Launch> {
    let (first, rest) = argv.split_first()?;
    match basename(first) {
        "sailjail" => parse_sailjail(rest),
        "firejail" => parse_firejail(rest),
        _ => None,
    }
}

/// The parent pid from a `/proc/PID/stat` line (the field after the command name,
/// which may itself hold spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The start time (field 22) from `/proc/PID/stat`.
pub fn parse_start(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The real uid from `/proc/PID/status`.
pub fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Reads every process under `proc`. A process that exits meanwhile is skipped; any
/// other unreadable command line makes the whole scan fail (a sandbox could hide there).
pub fn scan(proc: &Path) -> io::Result<Vec<Process>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(proc)? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let raw = match fs::read(dir.join("cmdline")) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(3) => continue, // ESRCH: exited
            Err(e) => return Err(e),
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let stat = fs::read_to_string(dir.join("stat")).ok();
        out.push(Process {
            pid,
            ppid: stat.as_deref().and_then(parse_ppid),
            start: stat.as_deref().and_then(parse_start),
            uid: fs::read_to_string(dir.join("status"))
                .ok()
                .and_then(|s| parse_uid(&s)),
            android: is_android(&argv),
            launch: parse_cmdline(&argv),
        });
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

/// Whether a command line belongs to Android AppSupport.
pub fn is_android(argv: &[String]) -> bool {
    argv.first().is_some_and(|a| basename(a) == "system_server")
        || argv.iter().any(|a| a.contains("aliendalvik"))
}

/// Whether Android AppSupport runs (any of its processes is visible).
pub fn android_running(procs: &[Process]) -> bool {
    procs.iter().any(|p| p.android)
}

/// Sandboxes started with any of `permissions`.
pub fn holding<'a>(procs: &'a [Process], permissions: &[&str]) -> Vec<&'a Process> {
    procs
        .iter()
        .filter(|p| {
            matches!(&p.launch, Some(Launch::Firejail { permissions: held, .. })
                if permissions.iter().any(|w| held.contains(*w)))
        })
        .collect()
}

/// Launches in progress of any of `apps`.
pub fn launching<'a>(procs: &'a [Process], apps: &BTreeSet<String>) -> Vec<&'a Process> {
    procs
        .iter()
        .filter(|p| matches!(&p.launch, Some(Launch::Sailjail { app }) if apps.contains(app)))
        .collect()
}

/// `roots` and every process below them (the sandboxed application under firejail).
pub fn with_descendants(procs: &[Process], roots: &[u32]) -> Vec<u32> {
    let mut found: BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let before = found.len();
        for p in procs {
            if p.ppid.is_some_and(|pp| found.contains(&pp)) {
                found.insert(p.pid);
            }
        }
        if found.len() == before {
            return found.into_iter().collect();
        }
    }
}

/// Sends SIGTERM to each of `procs` (pid and start time from a scan of `proc`), through
/// a pidfd opened and checked against the start time read again under `proc`: a pid
/// reused by another process since the scan is not signalled. A process that is
/// already gone is not an error.
pub fn terminate(proc: &Path, procs: &[(u32, Option<u64>)]) -> Result<(), String> {
    use rustix::process::{Pid, PidfdFlags, Signal, kill_process, pidfd_open, pidfd_send_signal};
    let mut errors = Vec::new();
    for &(pid, start) in procs {
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            errors.push(format!("{pid} is not a process id"));
            continue;
        };
        let sent = match pidfd_open(p, PidfdFlags::empty()) {
            Ok(fd) => {
                // The pidfd pins this process; its start time says whether it is the
                // one that was scanned.
                let now = fs::read_to_string(proc.join(pid.to_string()).join("stat"))
                    .ok()
                    .and_then(|s| parse_start(&s));
                if now != start {
                    continue;
                }
                pidfd_send_signal(&fd, Signal::TERM)
            }
            // Kernels before 5.3 have no pidfd: signal by pid.
            Err(rustix::io::Errno::NOSYS) => kill_process(p, Signal::TERM),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => errors.push(format!("stopping {pid}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    fn sailjail(app: &str) -> Option<Launch> {
        Some(Launch::Sailjail { app: app.into() })
    }

    #[test]
    fn sailjail_launches_name_their_application() {
        for (cmd, app) in [
            (
                "/usr/bin/sailjail -p harbour-cam.desktop /usr/bin/harbour-cam",
                "harbour-cam",
            ),
            (
                "sailjail -pharbour-cam.desktop /usr/bin/harbour-cam",
                "harbour-cam",
            ),
            ("sailjail -v -d org.foo.bar -- /usr/bin/bar", "org.foo.bar"),
            (
                "sailjail --desktop=org.foo.bar /usr/bin/bar -p x",
                "org.foo.bar",
            ),
            ("sailjail --desktop org.foo.bar /usr/bin/bar", "org.foo.bar"),
            (
                "sailjail --profile=/usr/share/applications/a.b.desktop /usr/bin/b",
                "a.b",
            ),
            (
                "sailjail -o syslog -- /usr/bin/jolla-camera",
                "jolla-camera",
            ),
            (
                "sailjail -vqp voicecall-ui.desktop /usr/bin/voicecall-ui",
                "voicecall-ui",
            ),
        ] {
            assert_eq!(parse_cmdline(&argv(cmd)), sailjail(app), "{cmd}");
        }
        assert_eq!(parse_cmdline(&argv("sailjail -p")), None);
        assert_eq!(parse_cmdline(&argv("/usr/bin/harbour-cam -p x")), None);
    }

    #[test]
    fn firejail_sandboxes_name_their_permissions() {
        let cmd = "/usr/bin/firejail --quiet --template=OrganizationName:org.foo \
                   --private-bin=harbour-cam --whitelist=/usr/share/harbour-cam \
                   --whitelist=/usr/share/applications/harbour-cam.desktop \
                   --profile=/etc/sailjail/permissions/harbour-cam.profile \
                   --profile=/etc/sailjail/permissions/Camera.permission \
                   --profile=/etc/sailjail/permissions/Audio.permission \
                   --profile=/etc/sailjail/permissions/Base.permission -- /usr/bin/harbour-cam";
        let args: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
        let Some(Launch::Firejail { app, permissions }) = parse_cmdline(&args) else {
            panic!("not recognised");
        };
        assert_eq!(app.as_deref(), Some("harbour-cam"));
        assert_eq!(
            permissions.into_iter().collect::<Vec<_>>(),
            ["Audio", "Base", "Camera"]
        );
        // A firejail that sailjail did not start (no permission profiles) is not ours.
        assert_eq!(
            parse_cmdline(&argv("firejail --private /usr/bin/firefox")),
            None
        );
    }

    #[test]
    fn stat_and_status_fields() {
        assert_eq!(parse_ppid("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
        assert_eq!(
            parse_uid("Name:\tx\nUid:\t100000\t100000\t100000\t100000\n"),
            Some(100000)
        );
    }

    #[test]
    fn scan_reads_a_proc_tree_and_finds_holders_and_children() {
        let tmp = tempfile::tempdir().unwrap();
        let proc = tmp.path();
        let put = |pid: u32, cmd: &str, ppid: u32| {
            let dir = proc.join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cmdline"), cmd.replace(' ', "\0") + "\0").unwrap();
            fs::write(dir.join("stat"), format!("{pid} (x) S {ppid} 0 0")).unwrap();
        };
        put(
            10,
            "/usr/bin/firejail --profile=/etc/sailjail/permissions/Camera.permission -- /usr/bin/cam",
            1,
        );
        put(11, "/usr/bin/cam", 10);
        put(12, "/usr/bin/other", 1);
        put(
            13,
            "/usr/bin/firejail --profile=/etc/sailjail/permissions/Location.permission -- /usr/bin/map",
            1,
        );
        put(14, "/usr/bin/sailjail -p cam.desktop /usr/bin/cam", 1);
        fs::create_dir_all(proc.join("self")).unwrap();
        let procs = scan(proc).unwrap();
        assert_eq!(procs.len(), 5);
        let cam: Vec<u32> = holding(&procs, &["Camera"]).iter().map(|p| p.pid).collect();
        assert_eq!(cam, [10]);
        assert_eq!(with_descendants(&procs, &cam), [10, 11]);
        let apps = BTreeSet::from(["cam".to_owned()]);
        assert_eq!(launching(&procs, &apps)[0].pid, 14);
        assert!(holding(&procs, &["Microphone"]).is_empty());
    }

    #[test]
    fn the_start_time_is_field_22_even_with_spaces_in_the_name() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67";
        assert_eq!(parse_start(stat), Some(987_654));
        assert_eq!(parse_ppid(stat), Some(1));
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_start(&own).is_some());
    }

    #[test]
    fn a_pid_whose_start_time_changed_is_not_signalled() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let real = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let start = parse_start(&real);
        // The fake proc root shows another start time: the pid was reused.
        let dir = tmp.path().join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        let other = real.replacen(
            &format!(" {} ", start.unwrap()),
            &format!(" {} ", start.unwrap() + 1),
            1,
        );
        fs::write(dir.join("stat"), &other).unwrap();
        terminate(tmp.path(), &[(pid, start)]).unwrap();
        assert!(child.try_wait().unwrap().is_none(), "not signalled");
        // The same process: signalled.
        fs::write(dir.join("stat"), &real).unwrap();
        terminate(tmp.path(), &[(pid, start)]).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "stopped by SIGTERM: {status:?}");
    }
}
