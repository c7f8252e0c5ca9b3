"""Notifications: email (SMTP, optional STARTTLS and login) and a webhook (POST of a JSON body).
A notification that cannot be sent is reported back as a string and never fails the backup."""

from __future__ import annotations

import json
import smtplib
import socket
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from .config import NotifyConfig


def wanted(cfg: NotifyConfig, event: str) -> bool:
    return event in cfg.on and bool(cfg.email or cfg.webhook)


def send(cfg: NotifyConfig, event: str, body: dict[str, Any]) -> list[str]:
    """Send `body` (job, database, status, error, size, duration, path, drill) for `event`
    ('failure', 'success', 'drill') where configured; returns the errors, if any."""
    if not wanted(cfg, event):
        return []
    errors = []
    if cfg.email:
        try:
            _email(cfg, event, body)
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(f"email via {cfg.smtp} failed: {exc}")
    if cfg.webhook:
        try:
            _webhook(cfg, body)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            errors.append(f"webhook {cfg.webhook.split('?')[0]} failed: {exc}")
    return errors


def _email(cfg: NotifyConfig, event: str, body: dict[str, Any]) -> None:
    host, _, port = cfg.smtp.rpartition(":") if ":" in cfg.smtp else (cfg.smtp, "", "25")
    msg = EmailMessage()
    msg["Subject"] = f"[deltadump] {body.get('job', 'backup')} {body.get('status', event)}: {body.get('database', '')}"
    msg["From"] = cfg.sender or f"deltadump@{socket.getfqdn()}"
    msg["To"] = ", ".join(cfg.email)
    lines = [f"{k}: {v}" for k, v in body.items() if v not in (None, "", [], {})]
    msg.set_content("\n".join(lines) + "\n")
    with smtplib.SMTP(host or "localhost", int(port or 25), timeout=cfg.timeout) as s:
        if cfg.starttls:
            s.starttls()
        if cfg.username:
            password = Path(cfg.password_file).expanduser().read_text().splitlines()[0] if cfg.password_file else ""
            s.login(cfg.username, password)
        s.send_message(msg)


def _webhook(cfg: NotifyConfig, body: dict[str, Any]) -> None:
    data = json.dumps(body, default=str).encode()
    req = urllib.request.Request(cfg.webhook, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=cfg.timeout) as r:
        if r.status >= 300:
            raise ValueError(f"HTTP {r.status}")
