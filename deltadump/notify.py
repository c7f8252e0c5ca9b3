"""Notifications: email (SMTP over verified TLS by default: STARTTLS or SMTPS, optional login) and a
webhook (POST of a JSON body to an http(s) URL). Everything sent is redacted (errors.redact): no
password of a DSN, password_file or the SMTP login ever leaves in a notification. A notification that
cannot be sent is reported back as a string and never fails the backup."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from .config import NotifyConfig
from .errors import redact, register_secret
from .naming import one_line


def wanted(cfg: NotifyConfig, event: str) -> bool:
    return event in cfg.on and bool(cfg.email or cfg.webhook)


def send(cfg: NotifyConfig, event: str, body: dict[str, Any]) -> list[str]:
    """Send `body` (job, database, status, error, size, duration, path, drill) for `event`
    ('failure', 'success', 'drill') where configured; returns the errors, if any."""
    if not wanted(cfg, event):
        return []
    errors = []
    password = _smtp_password(cfg) if cfg.email and cfg.username else ""
    body = _redacted(body)
    if cfg.email:
        try:
            _email(cfg, event, body, password)
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(f"email via {cfg.smtp} ({cfg.tls_mode}) failed: {_why(exc)}")
    if cfg.webhook:
        try:
            _webhook(cfg, body)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            errors.append(f"webhook {cfg.webhook.split('?')[0]} failed: {exc}")
    return [redact(e) for e in errors]


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate was not accepted ({exc.verify_message}); set [notify] ca_file"
    return str(exc) or type(exc).__name__


def _redacted(v: Any) -> Any:
    if isinstance(v, str):
        return redact(v)
    if isinstance(v, dict):
        return {k: _redacted(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_redacted(x) for x in v]
    return v


def _smtp_password(cfg: NotifyConfig) -> str:
    if not cfg.password_file:
        return ""
    try:
        password = Path(cfg.password_file).expanduser().read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""  # the login then fails, and says so
    register_secret(password)
    return password


def tls_context(cfg: NotifyConfig) -> ssl.SSLContext:
    """Certificate and host name verified (system CAs, or ca_file), unless tls_verify = false."""
    ctx = ssl.create_default_context(cafile=str(Path(cfg.ca_file).expanduser()) if cfg.ca_file else None)
    if not cfg.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _email(cfg: NotifyConfig, event: str, body: dict[str, Any], password: str) -> None:
    mode = cfg.tls_mode
    default_port = "465" if mode == "smtps" else "25"
    host, _, port = cfg.smtp.rpartition(":") if ":" in cfg.smtp else (cfg.smtp, "", default_port)
    msg = EmailMessage()
    msg["Subject"] = one_line(
        f"[deltadump] {body.get('job', 'backup')} {body.get('status', event)}: {body.get('database', '')}"
    )  # a header is one line, whatever a name holds
    msg["From"] = cfg.sender or f"deltadump@{socket.getfqdn()}"
    msg["To"] = ", ".join(cfg.email)
    lines = [f"{k}: {v}" for k, v in body.items() if v not in (None, "", [], {})]
    msg.set_content("\n".join(lines) + "\n")
    host, port_n = host or "localhost", int(port or default_port)
    smtp: smtplib.SMTP
    if mode == "smtps":
        smtp = smtplib.SMTP_SSL(host, port_n, timeout=cfg.timeout, context=tls_context(cfg))
    else:
        smtp = smtplib.SMTP(host, port_n, timeout=cfg.timeout)
    with smtp as s:
        if mode == "starttls":
            s.starttls(context=tls_context(cfg))  # refused (and nothing sent) unless the certificate checks out
        if cfg.username:  # config.py refuses a login without TLS
            s.login(cfg.username, password)
        s.send_message(msg)


def _webhook(cfg: NotifyConfig, body: dict[str, Any]) -> None:
    data = json.dumps(body, default=str).encode()
    req = urllib.request.Request(cfg.webhook, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=cfg.timeout) as r:
        if r.status >= 300:
            raise ValueError(f"HTTP {r.status}")
