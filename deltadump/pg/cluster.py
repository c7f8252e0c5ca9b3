"""A whole server: the databases on it, and its globals (`pg_dumpall --globals-only`: roles, role
memberships and settings, tablespaces) put back onto another server.

The globals script is not handed to psql: a server being restored onto already has roles (its
superuser at least), and the script's `ALTER ROLE` would change them (a new password for the very
superuser doing the restore). It is read statement by statement, each recognised by its form and the
role or tablespace it is about: what is about a role or tablespace that exists on the target is left
out (kept as it is, and reported), the rest runs, the roles in one transaction (all or none), then the
tablespaces. A statement of any other form is refused, never run. Names are read as SQL reads them
(quoted identifiers unescaped); what runs is pg_dumpall's own text. Nothing of a statement's text
(password hashes) ever reaches a message: errors carry the server's primary message only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatabaseError, IntegrityError
from .conn import Conn, classify
from .inspect import catalog_session, connect_kwargs

LIST_SQL = ("select datname from pg_catalog.pg_database where datallowconn and not datistemplate "
            "order by datname")  # fmt: skip


def _query(conn: Conn, sql: str) -> list[str]:
    """The first column of every row, names as they are: a name that is no UTF-8 (made in a SQL_ASCII
    database, by any role that may create one) has its bytes as lone surrogates (inspect.raw_names),
    so it is told apart from every real name and never stops the others being read."""
    import psycopg

    try:
        with psycopg.connect(**connect_kwargs(conn), autocommit=True) as c:
            catalog_session(c)
            return [str(r[0]) for r in c.execute(sql).fetchall()]
    except psycopg.Error as exc:
        raise classify(str(exc), conn) from exc


def list_databases(conn: Conn) -> list[str]:
    """Every database of conn's server that accepts connections, templates excepted (names as values)."""
    return _query(conn, LIST_SQL)


def role_names(conn: Conn) -> set[str]:
    return set(_query(conn, "select rolname from pg_catalog.pg_roles"))


def tablespace_names(conn: Conn) -> set[str]:
    return set(_query(conn, "select spcname from pg_catalog.pg_tablespace"))


# pg_dumpall releases that write a role's name into a comment line as it is (CVE-2025-8714): a line
# break in the name ends the comment, and the rest of the name is read as SQL by whatever runs the
# script. Fixed in 13.22, 14.19, 15.14, 16.10, 17.6 (the name's line breaks are replaced).
COMMENT_FIXED = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}


def writes_names_safely(version: str) -> bool:
    """Whether this pg_dumpall version keeps line breaks of names out of its comments."""
    m = re.match(r"(\d+)(?:\.(\d+))?", version)
    if m is None:
        return False
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return major > max(COMMENT_FIXED) or (major in COMMENT_FIXED and minor >= COMMENT_FIXED[major])


def names_with_line_breaks(conn: Conn) -> list[str]:
    """Roles and tablespaces whose names hold a line break (shown with it escaped)."""
    sql = (
        "select 'role ' || quote_ident(rolname) from pg_catalog.pg_roles where rolname ~ '[\\n\\r]' union all "
        "select 'tablespace ' || quote_ident(spcname) from pg_catalog.pg_tablespace where spcname ~ '[\\n\\r]'"
    )
    return [n.replace("\n", "\\n").replace("\r", "\\r") for n in _query(conn, sql)]


# -- reading pg_dumpall's script ---------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # word, ident (a quoted identifier), string, sym, meta (a psql meta-command line)
    value: str  # words upper-cased as keywords in `key`; identifiers as SQL names them
    start: int
    end: int

    @property
    def key(self) -> str:
        return self.value.upper() if self.kind == "word" else ""

    @property
    def name(self) -> str | None:
        """The identifier this token is (a bare word folds to lower case), else None."""
        if self.kind == "ident":
            return self.value
        if self.kind == "word" and re.fullmatch(r"[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*", self.value):
            return self.value.lower()
        return None


_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[\w$\x80-\U0010ffff]+")


def _lex(text: str) -> list[Token | None]:
    """Tokens, with None where a statement ends (a ';'); ValueError on an unterminated quote or comment."""
    out: list[Token | None] = []
    i, n = 0, len(text)
    fresh = True  # nothing of the current statement seen yet: a backslash starts a psql meta-command
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if text.startswith("--", i):  # to the end of the line, as SQL reads it (a CR ends it too)
            m = re.compile(r"[\n\r]").search(text, i)
            i = n if m is None else m.end()
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while depth and j < n:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise ValueError("an unterminated comment")
            i = j
            continue
        if c == "\\" and fresh:
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(Token("meta", text[i:j].strip(), i, j))
            out.append(None)
            i = j
            continue
        fresh = False
        if c == ";":
            out.append(None)
            fresh = True
            i += 1
        elif c in "'\"" or (c in "Ee" and text.startswith("'", i + 1)):
            escapes = c in "Ee"
            q = "'" if escapes else c
            j, val = i + (2 if escapes else 1), []
            while True:
                if j >= n:
                    raise ValueError("an unterminated quoted string or name")
                ch = text[j]
                if escapes and ch == "\\" and j + 1 < n:
                    val.append(text[j + 1])
                    j += 2
                elif ch == q and text.startswith(q, j + 1):
                    val.append(q)
                    j += 2
                elif ch == q:
                    j += 1
                    break
                else:
                    val.append(ch)
                    j += 1
            out.append(Token("ident" if q == '"' else "string", "".join(val), i, j))
            i = j
        elif c == "$" and (m := _DOLLAR.match(text, i)):
            end = text.find(m.group(0), m.end())
            if end < 0:
                raise ValueError("an unterminated dollar-quoted string")
            out.append(Token("string", text[m.end() : end], i, end + len(m.group(0))))
            i = end + len(m.group(0))
        elif m := _WORD.match(text, i):
            out.append(Token("word", m.group(0), i, m.end()))
            i = m.end()
        else:
            out.append(Token("sym", c, i, i + 1))
            i += 1
    if not fresh:
        raise ValueError("the last statement has no ';'")
    return out


@dataclass(frozen=True)
class Statement:
    """One statement of the globals script, and what it is about."""

    kind: str  # set, role, membership, parameter, tablespace
    subject: str  # the role, the member of a membership, or the tablespace ("" for set)
    text: str  # the SQL as pg_dumpall wrote it
    group: str = ""  # membership: the role it grants
    grantees: tuple[str, ...] = ()  # parameter privileges: to whom
    password: bool = False  # an ALTER ROLE that sets a password

    def describe(self) -> str:
        if self.kind == "membership":
            return f'membership of role "{self.subject}" in "{self.group}"'
        if self.kind == "parameter":
            return f"parameter privileges of {', '.join(repr(g) for g in self.grantees)}"
        return f'{self.kind} "{self.subject}"' if self.subject else "a session setting"


def _names_until(tokens: list[Token], start: int, stops: set[str]) -> tuple[list[str], int]:
    """Comma-separated identifiers from `start` up to a stop keyword (or the end)."""
    names, i = [], start
    while i < len(tokens) and tokens[i].key not in stops:
        t = tokens[i]
        if t.kind == "sym" and t.value == ",":
            i += 1
            continue
        if t.key == "PUBLIC":
            names.append("PUBLIC")
        elif t.key == "GROUP":  # GRANT ... TO GROUP name (old syntax)
            pass
        elif (name := t.name) is not None:
            names.append(name)
        else:
            raise ValueError("an unexpected token in a list of roles")
        i += 1
    return names, i


def _classify(tokens: list[Token], text: str) -> Statement | None:
    """What a statement is about; None for a psql meta-command pg_dumpall writes (\\restrict); ValueError
    for any statement of a form pg_dumpall's globals do not have."""
    keys = [t.key for t in tokens]

    def name_at(i: int) -> str:
        if i < len(tokens) and (name := tokens[i].name) is not None:
            return name
        raise ValueError("a name was expected")

    if tokens[0].kind == "meta":
        if re.fullmatch(r"\\(un)?restrict\s+\S+", tokens[0].value):
            return None
        raise ValueError(f"a psql meta-command other than \\restrict: {tokens[0].value.split()[0][:40]!r}")
    if keys[0] == "SET":
        return Statement("set", "", text)
    if keys[:2] in (["CREATE", "ROLE"], ["ALTER", "ROLE"]):
        return Statement("role", name_at(2), text, password="PASSWORD" in keys and keys[0] == "ALTER")
    if keys[:3] == ["COMMENT", "ON", "ROLE"]:
        return Statement("role", name_at(3), text)
    if keys[:2] in (["CREATE", "TABLESPACE"], ["ALTER", "TABLESPACE"]):
        return Statement("tablespace", name_at(2), text)
    if keys[:3] == ["COMMENT", "ON", "TABLESPACE"]:
        return Statement("tablespace", name_at(3), text)
    if keys[:2] == ["SECURITY", "LABEL"] and "ON" in keys:
        on = keys.index("ON")
        if on + 1 < len(keys) and keys[on + 1] in ("ROLE", "TABLESPACE"):
            return Statement(keys[on + 1].lower(), name_at(on + 2), text)
    if keys[0] in ("GRANT", "REVOKE"):
        to = "TO" if keys[0] == "GRANT" else "FROM"
        if "ON" in keys and keys.index("ON") < (keys.index(to) if to in keys else len(keys)):
            on = keys.index("ON")
            what = keys[on + 1] if on + 1 < len(keys) else ""
            if what == "TABLESPACE":
                return Statement("tablespace", name_at(on + 2), text)
            if what == "PARAMETER" and to in keys:
                grantees, _ = _names_until(tokens, keys.index(to) + 1, {"WITH", "GRANTED", "CASCADE", "RESTRICT"})
                return Statement("parameter", "", text, grantees=tuple(grantees))
            raise ValueError(f"privileges on {what.lower() or 'something'} among the globals")
        if keys[0] == "GRANT" and "TO" in keys:
            groups, i = _names_until(tokens, 1, {"TO"})
            members, _ = _names_until(tokens, i + 1, {"WITH", "GRANTED"})
            if len(groups) == 1 and len(members) == 1:
                return Statement("membership", members[0], text, group=groups[0])
    raise ValueError(f"a statement that is not one of the globals' forms ({' '.join(keys[:3]).strip()[:40]} ...)")


def parse_globals(script: str) -> list[Statement]:
    """The statements of a `pg_dumpall --globals-only` script; IntegrityError when it holds anything
    else (nothing of it has run then)."""
    for line in re.split(r"[\n\r]", script):  # a name pg_dumpall wrote into a comment and a line break ended
        if line.startswith('-- User Config "') and not line.endswith('"'):
            raise IntegrityError("the globals backup holds a role name with a line break written into a comment "
                                 "(pg_dumpall before 16.10, CVE-2025-8714): the rest of the name would be read as "
                                 "SQL; nothing of it was run")  # fmt: skip
    try:
        tokens = _lex(script)
    except ValueError as exc:
        raise IntegrityError(f"the globals backup cannot be read: {exc}") from None
    out: list[Statement] = []
    cur: list[Token] = []
    for t in tokens:
        if t is not None:
            cur.append(t)
            continue
        if not cur:
            continue
        try:
            st = _classify(cur, script[cur[0].start : cur[-1].end])
        except ValueError as exc:
            raise IntegrityError(f"the globals backup holds {exc}; nothing of it was run") from None
        if st is not None:
            out.append(st)
        cur = []
    return out


@dataclass
class GlobalsOutcome:
    created: list[str] = field(default_factory=list)  # roles and tablespaces created
    kept: list[str] = field(default_factory=list)  # what existed on the target: left as it was
    skipped: list[str] = field(default_factory=list)  # statements about what existed, left out
    passwords: bool = False  # the roles' password hashes were in the backup


def apply_globals(conn: Conn, statements: list[Statement]) -> GlobalsOutcome:
    """Create on conn's server the roles (with their attributes, settings and memberships) and the
    tablespaces of `statements` that it lacks; what it has is kept as it is, never altered."""
    import psycopg

    roles, spaces = role_names(conn), tablespace_names(conn)
    out = GlobalsOutcome(passwords=any(s.password for s in statements))
    for s in statements:
        if s.kind == "role" and s.text.upper().startswith("CREATE"):
            (out.kept if s.subject in roles else out.created).append(f'role "{s.subject}"')
        elif s.kind == "tablespace" and s.text.upper().startswith("CREATE"):
            (out.kept if s.subject in spaces else out.created).append(f'tablespace "{s.subject}"')

    def existing(s: Statement) -> bool:
        if s.kind in ("role", "membership"):
            return s.subject in roles
        if s.kind == "parameter":
            return any(g in roles for g in s.grantees)
        return s.kind == "tablespace" and s.subject in spaces

    def run(c: Any, s: Statement, hint: str) -> None:
        if s.kind != "set" and existing(s):
            if s.kind in ("membership", "parameter"):
                out.skipped.append(s.describe())
            return
        try:
            c.execute(s.text)
        except psycopg.Error as exc:
            why = exc.diag.message_primary or type(exc).__name__
            raise DatabaseError(f"restoring the globals: {s.describe()} failed on {conn.where}: {why}",
                                hint=hint) from None  # fmt: skip

    again = "existing roles and tablespaces are kept, so the restore can run again once this is fixed"
    try:
        with psycopg.connect(**connect_kwargs(conn), autocommit=True) as c:
            for s in statements:
                if s.kind == "set":
                    run(c, s, again)
            with c.transaction():
                for s in statements:
                    if s.kind in ("role", "membership", "parameter"):
                        run(c, s, f"no role was created (they are created in one transaction); {again}")
            for s in statements:  # CREATE TABLESPACE cannot run in a transaction
                if s.kind == "tablespace":
                    run(c, s, f"create the tablespace's folder (empty, owned by the server's user), or the "
                              f"tablespace itself, on the target; {again}")  # fmt: skip
    except psycopg.Error as exc:
        raise classify(str(exc), conn) from exc
    return out
