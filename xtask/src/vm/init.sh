#!/bin/busybox sh
# /init of the `cargo xtask vm-test` guest (busybox ash, PID 1).
#
# Loads the test drivers, then drives the real `redoubt-agent` through its modes and
# checks every result from kernel state (sysfs, /proc), independently of what the
# agent reports. The verdict leaves through qemu's isa-debug-exit port: PASS for
# success, 10 + N when step N fails (the host turns it back into the step's name).
# Any other end (a shell error, a panic, a hang) is a failure on the host side.

/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

PASS=100
STEP=0
STEP_NAME="start"
AGENT_PID=
STATE=/state
AGENT=/bin/redoubt-agent

# Milliseconds since boot (/proc/uptime has centiseconds).
now_ms() {
    read -r up _ </proc/uptime
    frac=${up#*.}
    frac=${frac#0}
    echo $((${up%.*} * 1000 + frac * 10))
}

# Writes VALUE to the isa-debug-exit port: qemu exits with status VALUE*2+1.
verdict() {
    printf "\\$(printf %03o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    # Only reached without the debug-exit device: a plain exit, which the host
    # never takes for a pass.
    poweroff -f
}

show_state() {
    echo "-- rfkill:"
    for r in /sys/class/rfkill/rfkill*; do
        [ -e "$r/type" ] || continue
        echo "   ${r##*/} $(cat "$r/name") type=$(cat "$r/type") soft=$(cat "$r/soft") hard=$(cat "$r/hard")"
    done
    echo "-- video4linux: $(ls /sys/class/video4linux 2>/dev/null | tr '\n' ' ')"
    echo "-- capture pcm: $(ls -d /proc/asound/card*/pcm*c 2>/dev/null | tr '\n' ' ')"
}

fail() {
    echo "== vm-test FAIL step $STEP ($STEP_NAME): $*"
    show_state
    if [ -n "$AGENT_PID" ] && [ -f /tmp/agent.log ]; then
        echo "-- agent log:"
        cat /tmp/agent.log
    fi
    echo "-- kernel log (tail):"
    dmesg | tail -n 30
    verdict $((10 + STEP))
}

step() {
    STEP=$1
    STEP_NAME=$2
    STEP_T0=$(now_ms)
    echo "== vm-test step $STEP: $STEP_NAME"
}

step_done() {
    echo "== vm-test step $STEP done in $(($(now_ms) - STEP_T0)) ms"
}

# wait_for LIMIT_MS WHAT COMMAND...: polls COMMAND until it succeeds; fails the step
# after LIMIT_MS. Leaves the time it took in WAITED.
wait_for() {
    limit=$1
    what=$2
    shift 2
    t0=$(now_ms)
    until "$@"; do
        if [ $(($(now_ms) - t0)) -ge "$limit" ]; then
            fail "not within $limit ms: $what"
        fi
        usleep 10000
    done
    WAITED=$(($(now_ms) - t0))
}

# The rfkill devices of TYPE (wlan, bluetooth), one sysfs directory per line.
rfkills() {
    for r in /sys/class/rfkill/rfkill*; do
        [ -e "$r/type" ] && [ "$(cat "$r/type")" = "$1" ] && echo "$r"
    done
}

count_rfkill() {
    rfkills "$1" | wc -l
}

# at_least_rfkill TYPE N
at_least_rfkill() {
    [ "$(count_rfkill "$1")" -ge "$2" ]
}

# all_soft TYPE VALUE: there is at least one device of TYPE and every one has soft=VALUE.
all_soft() {
    found=0
    for r in $(rfkills "$1"); do
        found=1
        [ "$(cat "$r/soft")" = "$2" ] || return 1
    done
    [ "$found" = 1 ]
}

video_present() {
    [ -n "$(ls /sys/class/video4linux 2>/dev/null)" ]
}

video_empty() {
    ! video_present
}

capture_present() {
    ls -d /proc/asound/card*/pcm*c >/dev/null 2>&1
}

# No capture pcm left, or none of them is open.
capture_closed() {
    for s in /proc/asound/card*/pcm*c/sub*/status; do
        [ -e "$s" ] || continue
        [ "$(cat "$s")" = "closed" ] || return 1
    done
    return 0
}

# The processes holding a camera or media-controller node open.
media_holders() {
    for fd in /proc/[0-9]*/fd/*; do
        case "$(readlink "$fd" 2>/dev/null)" in
        /dev/video* | /dev/media*) echo "$fd -> $(readlink "$fd")" ;;
        esac
    done
}

# rfkill event to /dev/rfkill: u32 idx, u8 type, u8 op (3 = change all), u8 soft, u8 hard.
rfkill_change_all() {
    case "$1" in
    wlan) type='\001' ;;
    bluetooth) type='\002' ;;
    esac
    case "$2" in
    0) soft='\000' ;;
    1) soft='\001' ;;
    esac
    printf "\\000\\000\\000\\000${type}\\003${soft}\\000" >/dev/rfkill
}

# run_logged COMMAND...: runs COMMAND with its output through a file (no terminal, so
# no colours in the log), prints it, and returns COMMAND's status.
run_logged() {
    "$@" >/tmp/out 2>&1
    rc=$?
    cat /tmp/out
    return $rc
}

agent_status() {
    echo "-- redoubt-agent status --json:"
    run_logged $AGENT status --state $STATE --json
}

# import MODE: the real offline import of the signed bundle for MODE.
import() {
    t0=$(now_ms)
    run_logged $AGENT bundle import --state $STATE "/vm/bundles/$1.json" ||
        fail "redoubt-agent bundle import $1 exited with status $rc"
    echo "-- import of $1 took $(($(now_ms) - t0)) ms"
    agent_status
    show_state
}

# check_mode MODE: the kernel state is what MODE's rules say. /vm/expect/MODE is
# written by the host from the policy: "wlan 0|1" and "bluetooth 0|1" (the soft
# state of every rfkill device of that type), "camera on|off", "microphone on|off".
check_mode() {
    [ -f "/vm/expect/$1" ] || fail "no /vm/expect/$1 in the initramfs"
    echo "-- $1 expects: $(tr '\n' ' ' <"/vm/expect/$1")"
    checked=0
    while read -r what want; do
        checked=$((checked + 1))
        case "$what" in
        wlan | bluetooth)
            all_soft "$what" "$want" || fail "$1: not every $what rfkill device has soft=$want"
            ;;
        camera)
            if [ "$want" = off ]; then
                video_empty || fail "$1: /sys/class/video4linux is not empty: $(ls /sys/class/video4linux | tr '\n' ' ')"
                holders=$(media_holders)
                [ -z "$holders" ] || fail "$1: camera nodes held open: $holders"
            else
                video_present || fail "$1: /sys/class/video4linux is empty"
            fi
            ;;
        microphone)
            if [ "$want" = off ]; then
                # Gone, not merely idle: a closed capture device can record at any moment.
                capture_closed || fail "$1: a capture pcm is open: $(cat /proc/asound/card*/pcm*c/sub*/status)"
                ! capture_present || fail "$1: capture devices remain: $(ls -d /proc/asound/card*/pcm*c | tr '\n' ' ')"
            else
                capture_present || fail "$1: no capture pcm in /proc/asound"
            fi
            ;;
        *) fail "unknown expectation '$what' in /vm/expect/$1" ;;
        esac
    done <"/vm/expect/$1"
    [ "$checked" = 4 ] || fail "/vm/expect/$1 holds $checked expectations, not 4"
    # The agent's own measurement must say the same as the kernel.
    run_logged $AGENT status --state $STATE --json >/dev/null || fail "$1: redoubt-agent status failed"
    while read -r what want; do
        case "$what" in
        wlan) cap=wifi state=$([ "$want" = 1 ] && echo off || echo on) ;;
        bluetooth) cap=bluetooth state=$([ "$want" = 1 ] && echo off || echo on) ;;
        *) cap=$what state=$want ;;
        esac
        grep -q "\"$cap\": \"$state\"" /tmp/out || fail "$1: the agent measures $cap as $(grep "\"$cap\":" /tmp/out), not $state"
    done <"/vm/expect/$1"
}

echo "== vm-test guest up ($(uname -r), $(now_ms) ms since boot)"

step 1 "boot: drivers loaded, wlan, bluetooth, camera and capture present"
while read -r file args; do
    [ -n "$file" ] || continue
    # shellcheck disable=SC2086 # the parameters are separate words
    insmod "/vm/modules/$file" $args || fail "insmod $file $args failed"
done </vm/modules/list
sleep 100000 <>/dev/vhci &
VHCI1=$!
wait_for 20000 "two wlan rfkill devices" at_least_rfkill wlan 2
wait_for 20000 "a bluetooth rfkill device (vhci controller)" at_least_rfkill bluetooth 1
wait_for 20000 "/sys/class/video4linux devices" video_present
wait_for 20000 "a capture pcm in /proc/asound" capture_present
all_soft wlan 0 || fail "wlan starts blocked"
all_soft bluetooth 0 || fail "bluetooth starts blocked"
show_state
echo "-- redoubt-agent probe:"
run_logged $AGENT probe || fail "probe failed"
grep -q "^backend (--hardware auto): linux" /tmp/out || fail "probe does not pick linux"
grep -q "^camera  *yes  *yes .*vivid:vivid.0" /tmp/out || fail "probe does not see vivid"
step_done

step 2 "secure-site: the kernel state the mode asks for"
import secure-site
check_mode secure-site
step_done

step 3 "hot-plug: a new bluetooth controller comes up blocked"
before=$(count_rfkill bluetooth)
sleep 100000 <>/dev/vhci &
VHCI2=$!
wait_for 20000 "a second bluetooth rfkill device" at_least_rfkill bluetooth $((before + 1))
wait_for 1000 "the new bluetooth rfkill device soft-blocked" all_soft bluetooth 1
echo "-- new controller blocked ${WAITED} ms after it appeared"
show_state
step_done

step 4 "watcher: the running agent repairs changes at once (re-check period 1 h)"
# The watcher logs what it sees at debug level: the log proves which events it saw.
REDOUBT_LOG=info,redoubt_agent::hardware::linux::watch=debug $AGENT run --state $STATE --recheck-ms 3600000 >/tmp/agent.log 2>&1 &
AGENT_PID=$!
agent_checked() {
    kill -0 "$AGENT_PID" 2>/dev/null || fail "redoubt-agent run exited early"
    grep -q "report queued" /tmp/agent.log
}
wait_for 30000 "the running agent's first report (log line 'report queued')" agent_checked
echo "-- agent did its first check after ${WAITED} ms"
rfkill_change_all bluetooth 0 || fail "cannot write an unblock event to /dev/rfkill"
wait_for 1000 "bluetooth soft-blocked again after an unblock behind the agent's back" all_soft bluetooth 1
echo "-- bluetooth re-blocked ${WAITED} ms after the unblock"
# Only our unblock makes a bluetooth (type 2) change event (op 2) with soft=0 here.
grep -q "rfkill event index=[0-9]* radio_type=2 op=2 soft=0" /tmp/agent.log ||
    fail "the agent's rfkill watcher did not see the unblock"
echo vivid.0 >/sys/bus/platform/drivers/vivid/bind || fail "the kernel refused to bind vivid.0 again"
echo "-- vivid.0 bound again behind the agent's back"
wait_for 1000 "/sys/class/video4linux empty again after a rebind" video_empty
echo "-- camera gone again ${WAITED} ms after the rebind"
grep -q "device change seen uevent=bind@/devices/platform/vivid.0" /tmp/agent.log ||
    fail "the agent's uevent watcher did not see the rebind"
check_mode secure-site
kill -TERM "$AGENT_PID"
agent_gone() {
    ! kill -0 "$AGENT_PID" 2>/dev/null || [ "$(cat /proc/$AGENT_PID/stat 2>/dev/null | cut -d' ' -f3)" = Z ]
}
wait_for 10000 "redoubt-agent run to stop on SIGTERM" agent_gone
wait "$AGENT_PID"
rc=$?
echo "-- agent log:"
cat /tmp/agent.log
AGENT_PID=
[ "$rc" = 0 ] || fail "redoubt-agent run exited with status $rc on SIGTERM"
step_done

step 5 "lockdown: the kernel state the mode asks for"
import lockdown
check_mode lockdown
step_done

step 6 "standard: the kernel state the mode asks for (everything back on)"
import standard
check_mode standard
step_done

step 7 "pass"
kill "$VHCI1" "$VHCI2" 2>/dev/null
echo "== vm-test PASS"
verdict $PASS
