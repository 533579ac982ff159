"""irctest controller for Parley.

irctest (https://github.com/progval/irctest) imports this module with
`--controller parley_controller` when this directory is on PYTHONPATH. Every test
gets a fresh `parley serve` with its own data directory, so the SASL and account
tests run instead of being skipped. See docs/irc-conformance.md.
"""
import os
import socket
import time
from typing import Optional, Set, Type

from irctest.basecontrollers import BaseServerController, DirectoryBasedController
from irctest.cases import BaseServerTestCase
from irctest.runner import NotImplementedByController
from irctest.specifications import Capabilities, OptionalBehaviors

PARLEY = os.environ.get("PARLEY_BIN", "parley")


class ParleyController(BaseServerController, DirectoryBasedController):
    software_name = "Parley"
    _port_wait_interval = 0.01
    supported_sasl_mechanisms: Set[str] = {"PLAIN"}
    supports_sts = False
    capabilities = frozenset(
        (
            Capabilities.ACCOUNT_NOTIFY,
            Capabilities.ACCOUNT_TAG,
            Capabilities.AWAY_NOTIFY,
            Capabilities.BATCH,
            Capabilities.ECHO_MESSAGE,
            Capabilities.EXTENDED_JOIN,
            Capabilities.LABELED_RESPONSE,
            Capabilities.MESSAGE_TAGS,
            Capabilities.MULTI_PREFIX,
            Capabilities.SERVER_TIME,
        )
    )
    optional_behaviors = frozenset(
        (
            OptionalBehaviors.BAN_EXCEPTION_MODE,
            OptionalBehaviors.CAP_REQ_MINUS,
            OptionalBehaviors.INVITE_EXCEPTION_MODE,
            OptionalBehaviors.INVITE_LIST,
            OptionalBehaviors.MULTI_JOIN,
            OptionalBehaviors.MULTI_KICK,
            OptionalBehaviors.MULTI_PRIVMSG,
            OptionalBehaviors.SASL_AFTER_REGISTRATION,
        )
    )

    def run(
        self,
        hostname: str,
        port: int,
        *,
        password: Optional[str],
        ssl: bool,
        run_services: bool,
        faketime: Optional[str],
        websocket_hostname: Optional[str],
        websocket_port: Optional[int],
    ) -> None:
        if websocket_hostname is not None or websocket_port is not None:
            raise NotImplementedByController("Websocket")
        if ssl:
            raise NotImplementedByController("TLS")
        assert self.proc is None
        self.port = port
        self.hostname = hostname
        # A line-protocol door beside the IRC one, for creating accounts with passwords of any length
        # (an IRC line is limited to 512 bytes).
        (_, self.line_port) = self.get_hostname_and_port()
        self.create_config()
        assert self.directory
        self.proc = self.execute(
            [
                PARLEY,
                "serve",
                # Loopback only, whatever address irctest picked the free port on.
                "--listen", f"irc://127.0.0.1:{port}",
                "--listen", f"line://127.0.0.1:{self.line_port}",
                "--data-dir", str(self.directory / "data"),
                "--server-name", "My.Little.Server",
                "--bcrypt-cost", "10",
                # irctest's fixtures use short passwords such as "sesame".
                "--min-password-length", "1",
                "--oper", "operuser:operpassword",
                "--no-console",
                *(["--irc-password", password] if password is not None else []),
                *([] if self.test_config.account_registration_before_connect else ["--irc-registration-after-connect"]),
            ]
        )

    def wait_for_services(self) -> None:
        # Accounts and NickServ are part of the server.
        pass

    def registerUser(
        self,
        case: BaseServerTestCase,
        username: str,
        password: Optional[str] = None,
    ) -> None:
        assert password
        deadline = time.time() + 30
        while True:
            # The server may still be starting: its listeners are bound before it prints them.
            try:
                sock = socket.create_connection(("127.0.0.1", self.line_port), timeout=30)
                break
            except ConnectionRefusedError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        with sock:
            sock.sendall(f"/register {username} {password}\n".encode())
            received = b""
            while b"OK register" not in received and b"ERR " not in received:
                if time.time() > deadline:
                    raise AssertionError(f"no answer to /register {username}")
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
            if b"OK register" not in received:
                raise AssertionError(f"could not register {username}: {received!r}")
            sock.sendall(b"/quit\n")


def get_irctest_controller_class() -> Type[ParleyController]:
    return ParleyController
