#!/usr/bin/env python3
"""End-to-end check with a real IRC client: irssi, driven headless in tmux.

Starts `parley serve` on free loopback ports, starts irssi in a tmux session connected to the IRC
door, and has a line-protocol client in #lobby exchange a message with it both ways. Exits 0 only if
the line client receives irssi's message and irssi's screen shows the line client's message.
Every wait is bounded. Usage: tools/clients/irssi-check.py PATH/TO/parley
"""
import os, shutil, socket, subprocess, sys, tempfile, time

PARLEY = sys.argv[1] if len(sys.argv) > 1 else ".build/debug/parley"
DEADLINE = 60

def fail(message):
    print(f"irssi-check: FAILED: {message}", flush=True)
    sys.exit(1)

def wait_for(what, predicate, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # polling an external program's screen, bounded by the deadline
    fail(f"timed out waiting for {what}")

def main():
    for tool in ("irssi", "tmux"):
        if not shutil.which(tool):
            fail(f"{tool} is not installed (apt-get install {tool})")
    work = tempfile.mkdtemp(prefix="parley-irssi-")
    server = subprocess.Popen([PARLEY, "serve", "--listen", "line://127.0.0.1:0", "--listen", "irc://127.0.0.1:0",
                               "--data-dir", os.path.join(work, "data"), "--server-name", "parley.check", "--no-console"],
                              stdout=subprocess.PIPE, text=True)
    session = f"parley-irssi-{os.getpid()}"
    try:
        ports = {}
        while len(ports) < 2:
            line = server.stdout.readline()
            if not line:
                fail("the server exited before listening")
            if line.startswith("listening "):
                scheme, rest = line.split()[1].split("://")
                ports[scheme] = int(rest.rsplit(":", 1)[1])
        # The line-protocol user.
        line_client = socket.create_connection(("127.0.0.1", ports["line"]), timeout=DEADLINE)
        received = b""
        def read_until(token, timeout=20):
            nonlocal received
            end = time.time() + timeout
            line_client.settimeout(0.5)
            while token not in received:
                if time.time() > end:
                    fail(f"the line client never received {token!r}; it got: {received[-500:]!r}")
                try:
                    chunk = line_client.recv(65536)
                    if not chunk:
                        fail("the server closed the line client's connection")
                    received += chunk
                except socket.timeout:
                    pass
        read_until(b"WELCOME ")

        # irssi in tmux, with a home of its own so no user configuration interferes.
        home = os.path.join(work, "irssi")
        os.makedirs(home)
        with open(os.path.join(home, "config"), "w") as config:
            config.write('settings = { core = { real_name = "Irssi Check"; user_name = "irssi"; nick = "irssiuser"; }; };\n')
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                        f"irssi --home={home} -c 127.0.0.1 -p {ports['irc']} -n irssiuser"], check=True)
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        wait_for("irssi to register (001)", lambda: "Welcome to the Parley IRC network" in screen())
        subprocess.run(["tmux", "send-keys", "-t", session, "/join #lobby", "Enter"], check=True)
        read_until(b"JOIN #lobby irssiuser")
        subprocess.run(["tmux", "send-keys", "-t", session, "hello from irssi", "Enter"], check=True)
        read_until(b"MSG #lobby irssiuser: hello from irssi")
        line_client.sendall(b"hello from the line door\n")
        wait_for("irssi to show the line client's message", lambda: "hello from the line door" in screen())
        print("irssi-check: passed (irssi and a line-protocol client exchanged messages in #lobby)", flush=True)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
