//! `cargo xtask vm-test`: the agent's real `linux` backend against a real kernel under
//! qemu (software emulation, no KVM needed).
//!
//! Everything comes from Debian packages (`qemu-system-x86`, `linux-image-amd64`,
//! `busybox-static`, `kmod`) and from this workspace:
//!
//! 1. a static `redoubt-agent` (crt-static, the `vm` profile below, in `target/vm`);
//! 2. an initramfs (`target/vm/vm-test/initramfs.cpio`, written here in `newc` format):
//!    busybox, the agent, the test drivers with their dependencies as `modprobe`
//!    resolves them for the installed kernel (`rfkill`, `mac80211_hwsim` for two Wi-Fi
//!    radios, `hci_vhci` for Bluetooth controllers, `vivid` for a camera, `snd-dummy`
//!    for a microphone), a state directory enrolled without a server (identity with
//!    `hardware: linux`, device key) and three policy bundles signed by a fresh
//!    organization key (v1 `secure-site`, v2 `lockdown`, v3 `standard`);
//! 3. the guest's `/init` (`vm/init.sh`) switches modes with the real
//!    `redoubt-agent bundle import` and `run`, and checks each result from kernel state;
//!    its verdict leaves through qemu's `isa-debug-exit` device.
//!
//! The console goes to stdout and to `target/vm/vm-test/console.log`. Only the pass
//! value counts as a pass: a failed step has its own value, and a plain qemu exit (a
//! kernel panic, `/init` dying) or the host-side deadline is a failure.

mod cpio;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use redoubt_agent::state::{Identity, StateDir};
use redoubt_proto::{
    Assignments, Capability, CapabilityRules, DeviceId, Fingerprint, HardwareKind, PolicyBundle,
    Rule, SignedEnvelope, Timestamp,
};

use crate::common::{check_flags, flag_value, workspace_root};

/// Usage of `vm-test`.
pub const USAGE: &str = "cargo xtask vm-test [--timeout SECS]";

/// The Debian packages the test needs (named in error messages).
const PACKAGES: &str = "qemu-system-x86 linux-image-amd64 busybox-static kmod";

/// The guest's `/init`.
const GUEST_INIT: &str = include_str!("vm/init.sh");

/// The value the guest writes to the debug-exit port when every step passed
/// (`PASS` in `vm/init.sh`); a failure of step N writes `FAIL_BASE + N`.
const PASS: i32 = 100;
/// See [`PASS`].
const FAIL_BASE: i32 = 10;

/// The guest's steps, in order (step N is `STEPS[N - 1]`), as `vm/init.sh` names them.
const STEPS: &[&str] = &[
    "boot: drivers loaded, wlan, bluetooth, camera and capture present",
    "secure-site: the kernel state the mode asks for",
    "hot-plug: a new bluetooth controller comes up blocked",
    "watcher: the running agent repairs changes at once (re-check period 1 h)",
    "lockdown: the kernel state the mode asks for",
    "standard: the kernel state the mode asks for (everything back on)",
    "pass",
];

/// The test drivers and their parameters; their dependencies are added by `modprobe`.
const DRIVERS: &[(&str, &str)] = &[
    ("rfkill", ""),
    ("mac80211_hwsim", "radios=2"),
    ("hci_vhci", ""),
    ("vivid", "n_devs=1"),
    ("snd-dummy", ""),
];

/// The bundles written into the guest, in version order.
const MODES: &[&str] = &["secure-site", "lockdown", "standard"];

/// The Rust target of the guest.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The build profile of the guest's agent: release without LTO and with more codegen
/// units, which builds much faster on a small machine; stripped, so the initramfs
/// stays small. Given with `--config` so that the workspace's profiles stay as they are.
const VM_PROFILE: &[&str] = &[
    "profile.vm.inherits=\"release\"",
    "profile.vm.lto=false",
    "profile.vm.codegen-units=16",
    "profile.vm.opt-level=1",
    "profile.vm.strip=true",
    "profile.vm.incremental=false",
];

/// Runs `cargo xtask vm-test`.
pub fn main(args: &[&str]) -> Result<()> {
    check_flags(args, &["--timeout"])?;
    let timeout = Duration::from_secs(flag_value(args, "--timeout")?.unwrap_or(300));
    let started = Instant::now();
    let root = workspace_root().canonicalize()?;
    let work = root.join("target/vm/vm-test");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let qemu = find_program("qemu-system-x86_64")?;
    let modprobe = find_program("modprobe")?;
    let kernel = Kernel::find(Path::new("/lib/modules"), Path::new("/boot"))?;
    let busybox = PathBuf::from("/bin/busybox");
    require_static(&busybox, "busybox-static")?;
    println!(
        "vm-test: kernel {} ({}), {}",
        kernel.version,
        kernel.image.display(),
        qemu.display()
    );

    let t = Instant::now();
    let agent = build_agent(&root)?;
    require_static(&agent, "a crt-static build")?;
    let build_time = t.elapsed();

    let t = Instant::now();
    let modules = kernel.module_closure(&modprobe, DRIVERS)?;
    let initrd = work.join("initramfs.cpio");
    let size = write_initramfs(&initrd, &busybox, &agent, &modules)?;
    let initramfs_time = t.elapsed();
    println!(
        "vm-test: initramfs {} ({:.1} MiB, {} modules) in {:.1} s",
        initrd.display(),
        size as f64 / (1024.0 * 1024.0),
        modules.len(),
        initramfs_time.as_secs_f64()
    );

    let t = Instant::now();
    let log = work.join("console.log");
    let run = boot(&qemu, &kernel, &initrd, &log, timeout)?;
    let vm_time = t.elapsed();

    println!(
        "vm-test: agent build {:.1} s, initramfs {:.1} s, VM boot to verdict {:.1} s, total {:.1} s",
        build_time.as_secs_f64(),
        initramfs_time.as_secs_f64(),
        vm_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for line in &run.step_times {
        println!("vm-test:   {line}");
    }
    match run.verdict {
        Verdict::Pass => {
            println!("vm-test: PASS");
            Ok(())
        }
        Verdict::StepFailed(step) => bail!(
            "vm-test FAILED at step {step} ({}): {}; console log: {}",
            step_name(step),
            run.failure
                .as_deref()
                .unwrap_or("(the guest printed no reason)"),
            log.display()
        ),
        Verdict::Exited(status) => bail!(
            "vm-test FAILED: qemu ended ({status}) without a verdict during step {} ({}) — a kernel \
             panic or the guest's /init dying ends this way; console log: {}",
            run.last_step,
            step_name(run.last_step),
            log.display()
        ),
        Verdict::TimedOut => bail!(
            "vm-test FAILED: no verdict within {} s (qemu killed) during step {} ({}); console log: {}",
            timeout.as_secs(),
            run.last_step,
            step_name(run.last_step),
            log.display()
        ),
    }
}

fn step_name(step: i32) -> &'static str {
    usize::try_from(step - 1)
        .ok()
        .and_then(|i| STEPS.get(i))
        .copied()
        .unwrap_or("before the first step")
}

/// `name` in `PATH` or in the sbin directories (which a non-root `PATH` may lack).
fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .with_context(|| {
            format!("{name} not found; the VM test needs: apt-get install --no-install-recommends {PACKAGES}")
        })
}

/// Fails unless `path` is an ELF executable without a program interpreter (static).
fn require_static(path: &Path, what: &str) -> Result<()> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF: program headers at e_phoff, e_phnum of e_phentsize.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("{} is not a 64-bit ELF executable", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} has a truncated ELF header", path.display());
    };
    const PT_INTERP: u32 = 3;
    let interp = (0..usize::from(phnum)).any(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| u32_at(off + i * usize::from(phentsize)))
            == Some(PT_INTERP)
    });
    if interp {
        bail!(
            "{} is dynamically linked; the guest has no libraries, it needs {what}",
            path.display()
        );
    }
    Ok(())
}

/// An installed kernel: its version (the name of its `/lib/modules` directory) and image.
struct Kernel {
    version: String,
    image: PathBuf,
}

impl Kernel {
    /// The newest kernel that has both `/lib/modules/VERSION` and `/boot/vmlinuz-VERSION`.
    fn find(modules: &Path, boot: &Path) -> Result<Kernel> {
        let no_kernel = || {
            format!(
                "no kernel with both {}/VERSION and {}/vmlinuz-VERSION; the VM test needs: \
                 apt-get install --no-install-recommends {PACKAGES}",
                modules.display(),
                boot.display()
            )
        };
        let entries = fs::read_dir(modules).with_context(no_kernel)?;
        let version = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|v| {
                boot.join(format!("vmlinuz-{v}")).is_file()
                    && modules.join(v).join("modules.dep").is_file()
            })
            .max_by_key(|v| version_key(v))
            .with_context(no_kernel)?;
        let image = boot.join(format!("vmlinuz-{version}"));
        File::open(&image).with_context(|| format!("{} is not readable", image.display()))?;
        Ok(Kernel { version, image })
    }

    /// The module files that load `drivers` in dependency order, each once, with the
    /// driver's parameters on the driver's own file (as `modprobe` resolves them).
    fn module_closure(
        &self,
        modprobe: &Path,
        drivers: &[(&str, &str)],
    ) -> Result<Vec<(PathBuf, String)>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (driver, params) in drivers {
            let result = Command::new(modprobe)
                .args(["-S", &self.version, "--show-depends", driver])
                .output()
                .with_context(|| format!("running {}", modprobe.display()))?;
            if !result.status.success() {
                bail!(
                    "modprobe --show-depends {driver} for kernel {}: {}",
                    self.version,
                    String::from_utf8_lossy(&result.stderr).trim()
                );
            }
            let text = String::from_utf8(result.stdout).context("modprobe output")?;
            let mut found = false;
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if words.next() != Some("insmod") {
                    continue;
                }
                let path = PathBuf::from(words.next().context("insmod line without a file")?);
                let own = module_name(&path) == module_name(Path::new(driver));
                found |= own;
                if seen.insert(path.clone()) {
                    out.push((
                        path,
                        if own {
                            (*params).to_owned()
                        } else {
                            String::new()
                        },
                    ));
                }
            }
            if !found {
                bail!(
                    "kernel {} has no loadable module {driver} (built in, or missing)",
                    self.version
                );
            }
        }
        Ok(out)
    }
}

/// A kernel version as numbers, for ordering (`6.1.0-56-amd64` → 6, 1, 0, 56, 64).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A module's name as the kernel sees it (`snd-dummy.ko` → `snd_dummy`).
fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.split('.').next().unwrap_or_default().replace('-', "_")
}

/// Builds the static agent for the guest and returns its path.
fn build_agent(root: &Path) -> Result<PathBuf> {
    println!("vm-test: building a static redoubt-agent (profile vm, target/vm)…");
    let target_dir = root.join("target/vm");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "--locked",
        "-p",
        "redoubt-agent",
        "--profile",
        "vm",
    ])
    .args(["--target", GUEST_TARGET, "--target-dir"])
    .arg(&target_dir)
    .current_dir(root)
    // With an explicit --target these flags reach only the target's crates, not
    // build scripts and proc macros.
    .env("RUSTFLAGS", "-C target-feature=+crt-static")
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for setting in VM_PROFILE {
        cmd.args(["--config", setting]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the static redoubt-agent failed ({status})");
    }
    Ok(target_dir
        .join(GUEST_TARGET)
        .join("vm")
        .join("redoubt-agent"))
}

/// The files the guest starts with: the enrolled state directory (`state/…`), the (`vm/bundles/MODE.json`), as (path, mode, content).
fn guest_files() -> Result<Vec<(String, u32, Vec<u8>)>> {
    let now = Timestamp::now();
    let organization = SigningKey::generate(&mut OsRng);
    let mut id = [0u8; 12];
    OsRng.fill_bytes(&mut id);
    let device_id = DeviceId::from_random(id);

    let tmp = tempfile::tempdir()?;
    let dir = StateDir::new(tmp.path().join("state"));
    dir.create()?;
    dir.store_key(&SigningKey::generate(&mut OsRng))?;
    dir.store_identity(&Identity {
        device_id: device_id.clone(),
        user: "vm-test".parse()?,
        // Nothing listens there: the agent backs off and keeps enforcing offline.
        server: url::Url::parse("https://127.0.0.1:9")?,
        ca_fingerprint: Fingerprint::of_der(b"vm-test: no server"),
        organization_key: organization.verifying_key(),
        hardware: HardwareKind::Linux,
        enrolled_at: now,
    })?;

    let mut files = Vec::new();
    for entry in fs::read_dir(dir.root())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let mode = entry.metadata()?.permissions().mode() & 0o777;
        files.push((format!("state/{name}"), mode, fs::read(entry.path())?));
    }
    for (version, mode) in (1..).zip(MODES) {
        let bundle = PolicyBundle {
            device_id: device_id.clone(),
            version,
            issued_at: now,
            expires_at: now.plus_secs(24 * 3600),
            modes: redoubt_policy::presets(),
            assignments: Assignments {
                base_mode: mode.parse()?,
                group_modes: Vec::new(),
            },
            check_in_interval_secs: 60,
            organization_endpoints: Vec::new(),
            servers: Vec::new(),
            zones: Vec::new(),
        };
        let rules = &bundle
            .modes
            .iter()
            .find(|m| m.name.as_str() == *mode)
            .with_context(|| format!("the presets have no mode {mode}"))?
            .capabilities;
        files.push((
            format!("vm/expect/{mode}"),
            0o644,
            expectations(mode, rules)?.into_bytes(),
        ));
        let envelope = SignedEnvelope::sign(PolicyBundle::KIND, &bundle, &organization);
        files.push((
            format!("vm/bundles/{mode}.json"),
            0o644,
            serde_json::to_vec_pretty(&envelope)?,
        ));
    }
    Ok(files)
}

/// What `mode`'s rules ask of the guest's test hardware, one `WHAT VALUE` line each, as
/// `check_mode` in `vm/init.sh` reads it: the rfkill soft state of every `wlan` and
/// `bluetooth` device (1 = blocked), and whether `camera` and `microphone` are `on` or
/// `off`. Fails when the rules of `secure-site` or `standard` no longer give the
/// hot-plug, watcher and restore steps something to prove.
fn expectations(mode: &str, rules: &CapabilityRules) -> Result<String> {
    let denied = |cap| rules.get(cap) == Rule::Deny;
    let needed: &[(Capability, bool)] = match mode {
        // Steps 3 and 4 block a new controller and repair bluetooth and the camera.
        "secure-site" => &[(Capability::Bluetooth, true), (Capability::Camera, true)],
        // Step 6 shows that everything comes back.
        "standard" => &[
            (Capability::Wifi, false),
            (Capability::Bluetooth, false),
            (Capability::Camera, false),
            (Capability::Microphone, false),
        ],
        _ => &[],
    };
    for (cap, deny) in needed {
        if denied(*cap) != *deny {
            bail!(
                "the VM test expects {mode} to {} {cap:?}; update vm/init.sh's steps to the new preset",
                if *deny { "deny" } else { "allow" }
            );
        }
    }
    let soft = |cap| if denied(cap) { 1 } else { 0 };
    let on = |cap| if denied(cap) { "off" } else { "on" };
    Ok(format!(
        "wlan {}\nbluetooth {}\ncamera {}\nmicrophone {}\n",
        soft(Capability::Wifi),
        soft(Capability::Bluetooth),
        on(Capability::Camera),
        on(Capability::Microphone)
    ))
}

/// Writes the initramfs; returns its size in bytes.
fn write_initramfs(
    path: &Path,
    busybox: &Path,
    agent: &Path,
    modules: &[(PathBuf, String)],
) -> Result<u64> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let out =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let mut a = cpio::Archive::new(out);
    // Mount points and the directories busybox installs its applets into; the parents
    // of files come with them.
    for dir in ["dev", "proc", "sys", "tmp", "sbin", "usr/bin", "usr/sbin"] {
        a.dir(dir, 0o755)?;
    }
    a.dir("state", 0o700)?;
    // The kernel opens /dev/console for /init before /init mounts devtmpfs.
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, GUEST_INIT.as_bytes())?;
    a.file("bin/busybox", 0o755, &read(busybox)?)?;
    a.file("bin/redoubt-agent", 0o755, &read(agent)?)?;

    let mut list = String::new();
    for (i, (module, params)) in modules.iter().enumerate() {
        let name = format!("{i:02}-{}.ko", module_name(module));
        a.file(&format!("vm/modules/{name}"), 0o644, &read(module)?)?;
        list.push_str(&format!("{name} {params}\n"));
    }
    a.file("vm/modules/list", 0o644, list.as_bytes())?;
    for (name, mode, content) in guest_files()? {
        a.file(&name, mode, &content)?;
    }
    let (_, size) = a.finish()?;
    Ok(size)
}

/// How the VM ended.
enum Verdict {
    Pass,
    StepFailed(i32),
    /// qemu exited without a verdict (the exit status).
    Exited(ExitStatus),
    TimedOut,
}

/// What the run showed.
struct Run {
    verdict: Verdict,
    /// The step the console last announced (0 before the first).
    last_step: i32,
    /// The guest's failure line.
    failure: Option<String>,
    /// The guest's per-step timing lines.
    step_times: Vec<String>,
}

/// Boots the guest, streams its console to stdout and `log`, and waits for its
/// verdict until `timeout`, killing qemu then.
fn boot(qemu: &Path, kernel: &Kernel, initrd: &Path, log: &Path, timeout: Duration) -> Result<Run> {
    let mut log =
        BufWriter::new(File::create(log).with_context(|| format!("creating {}", log.display()))?);
    let mut child = Command::new(qemu)
        .args(["-accel", "tcg", "-m", "512", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut buf = Vec::new();
        while stdout.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + timeout;
    let mut run = Run {
        verdict: Verdict::TimedOut,
        last_step: 0,
        failure: None,
        step_times: Vec::new(),
    };
    let mut on_line = |line: String, run: &mut Run| -> Result<()> {
        println!("guest| {line}");
        writeln!(log, "{line}")?;
        if let Some(rest) = line.strip_prefix("== vm-test step ") {
            let number = rest.split([':', ' ']).next().and_then(|n| n.parse().ok());
            if rest.contains(" done in ") {
                run.step_times
                    .push(line.trim_start_matches("== vm-test ").to_owned());
            } else if let Some(n) = number {
                run.last_step = n;
            }
        }
        // "== vm-test FAIL step N (NAME): REASON"
        if let Some(rest) = line.strip_prefix("== vm-test FAIL") {
            let reason = rest.split_once("): ").map_or(rest, |(_, reason)| reason);
            run.failure = Some(reason.to_owned());
        }
        Ok(())
    };
    let status = loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => on_line(line, &mut run)?,
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
    };
    // qemu is gone: its stdout ends, so the reader ends too.
    reader.join().ok();
    for line in lines.try_iter() {
        on_line(line, &mut run)?;
    }
    log.flush()?;
    run.verdict = match status {
        None => Verdict::TimedOut,
        Some(status) => match status.code() {
            Some(code) if code == PASS * 2 + 1 => Verdict::Pass,
            Some(code)
                if code % 2 == 1
                    && (FAIL_BASE + 1..=FAIL_BASE + STEPS.len() as i32)
                        .contains(&((code - 1) / 2)) =>
            {
                Verdict::StepFailed((code - 1) / 2 - FAIL_BASE)
            }
            _ => Verdict::Exited(status),
        },
    };
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_order_by_number() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "5.10.0-30-amd64"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64"]);
    }

    #[test]
    fn module_names_as_the_kernel_sees_them() {
        assert_eq!(
            module_name(Path::new("/lib/modules/x/sound/drivers/snd-dummy.ko")),
            "snd_dummy"
        );
        assert_eq!(module_name(Path::new("snd-dummy")), "snd_dummy");
        assert_eq!(
            module_name(Path::new("mac80211_hwsim.ko.xz")),
            "mac80211_hwsim"
        );
    }

    #[test]
    fn expectations_follow_the_presets() -> Result<()> {
        let expect = |mode: &str| -> Result<String> {
            let preset = redoubt_policy::preset(mode).context("preset")?;
            expectations(mode, &preset.capabilities)
        };
        assert_eq!(
            expect("secure-site")?,
            "wlan 0\nbluetooth 1\ncamera off\nmicrophone off\n"
        );
        assert_eq!(
            expect("standard")?,
            "wlan 0\nbluetooth 0\ncamera on\nmicrophone on\n"
        );
        let mut open = redoubt_policy::preset("secure-site").context("preset")?;
        open.capabilities = CapabilityRules::all(Rule::Allow);
        assert!(expectations("secure-site", &open.capabilities).is_err());
        Ok(())
    }

    #[test]
    fn the_guest_script_agrees_with_the_host() {
        assert!(GUEST_INIT.contains(&format!("PASS={PASS}\n")));
        assert!(GUEST_INIT.contains(&format!("verdict $(({FAIL_BASE} + STEP))")));
        for (i, name) in STEPS.iter().enumerate() {
            assert!(
                GUEST_INIT.contains(&format!("step {} \"{name}\"", i + 1)),
                "step {} is not named {name:?} in vm/init.sh",
                i + 1
            );
        }
    }
}
