"""A blocking LMTP client for tests: byte-exact, no smtplib.

``Client(address, source=None)``: ``address`` is a unix socket path or
(host, port); ``source`` an IP address to connect from (inet only).
``line()`` one reply line, ``reply()`` one (multi-line) reply as a list,
``cmd(text)`` send a command and return its reply (a str for a one-line
reply), ``send(bytes)`` raw bytes, ``closed()`` True once the server has
closed the connection.  ``transaction(client, sender, recipients, body)``
runs MAIL, RCPT..., DATA, body and the end marker and returns (RCPT
replies, replies after DATA) - the DATA replies are one per accepted
recipient, or the one reply to DATA when none was accepted.
"""

import socket

START_DATA = "354 End data with <CR><LF>.<CR><LF>"
MAIL_OK = "250 2.1.0 Ok"


class Client:
    def __init__(self, address, timeout=20, source=None):
        if isinstance(address, (tuple, list)):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = tuple(address)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = str(address)
        self.sock.settimeout(timeout)
        try:
            if source is not None:  # e.g. "127.0.0.2": another client host
                self.sock.bind((source, 0))
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def reply(self):
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text):
        self.send(text + "\r\n")
        lines = self.reply()
        return lines[0] if len(lines) == 1 else lines

    def closed(self):
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def transaction(client, sender, recipients, body, params=""):
    assert client.cmd(f"MAIL FROM:<{sender}>{params}") == MAIL_OK
    rcpt_replies = [client.cmd(f"RCPT TO:<{r}>") for r in recipients]
    accepted = sum(r.startswith("2") for r in rcpt_replies)
    reply = client.cmd("DATA")
    if not accepted:
        return rcpt_replies, [reply]
    assert reply == START_DATA, reply
    client.send(body + b".\r\n")
    return rcpt_replies, [client.line() for _ in range(accepted)]
