"""Fixed lists of hostile inputs, tried on every entry point that takes them (test_receiver, test_fuzz).

Each value is something an attacker, a broken exporter or a fat-fingered operator could send: shell
metacharacters, path traversal, control characters, over-long and non-ASCII strings, look-alike Unicode,
values that resemble Redis glob patterns or key separators. None of them may reach a shell, a path or a
Redis key.
"""

from __future__ import annotations

# Host ids that fail ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ (the receiver answers 422 for each).
HOSTILE_HOST_IDS = [
    "a;reboot",
    "$(id)",
    "../../etc",
    "h1\n",
    "line\nbreak",
    "x" * 200,
    "hôte-é",
    "-leading-dash",
    ".hidden",
    "a b",
    "`id`",
    "a|b",
    "",
    "h1/../../root",
    "h\x00null",
    # added for the fuzz suite
    "..",
    ".",
    "_leading-underscore",
    "h1\r\nX-Injected: 1",
    "h1\t",
    " h1",
    "h1 ",
    "a" * 64,  # one past the 63-character limit
    "h1&&id",
    "h1||id",
    "h1>/tmp/x",
    "h1<x",
    "h1'x",
    'h1"x',
    "h1\\x",
    "h1/x",
    "~root",
    "*",
    "h*",
    "h?",
    "[h]1",
    "h1:lock",
    "remediator:host:h1",
    "h1{0}",
    "%2e%2e%2f",
    "%00",
    "h1\u200b",  # zero-width space
    "h\u0131",  # dotless i: looks like "hi"
    "\uff481",  # fullwidth h
    "h1\u202e",  # right-to-left override
    "\uff11\uff12\uff13",  # fullwidth digits (str.isdigit() would say yes)
    "h1\x7f",
    "h1\x1b[31m",
    "\ufeffh1",  # byte order mark
    "h1\udc80",  # lone surrogate (only reachable through a JSON \\u escape)
]

# Valid host ids at the edges of the pattern: every entry point must accept these.
EDGE_VALID_HOST_IDS = ["a", "0", "A" * 63, "h1.example-2_b", "9.9.9.9", "h--", "h..", "h__"]

# Label values (alertname, severity, other labels), fingerprints and such: any string is allowed by the
# schema, so these must never crash anything, never reach a key, and only ever be echoed escaped.
HOSTILE_LABEL_VALUES = [
    "",
    " ",
    "$(reboot)",
    "`id`",
    "; rm -rf / #",
    "../../../../etc/passwd",
    "{{7*7}}",
    "${jndi:ldap://127.0.0.1/a}",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%s%s%s%n",
    "\x00",
    "line\nbreak\r\n",
    "\u202e\u200b\ufeff",
    "ünïcödé 漢字 🚨",
    "x" * 4096,  # the schema's maxLength for a label value
    "remediator:*",
    "*",
    "\\",
    '"',
    "\udc80",  # lone surrogate: refused with 400 where the remediator would store or echo it
]

# Path segments for /api/v1/hosts/<id>, /api/v1/jobs/<id>/requeue and /ui/hosts/<id> (URL-quoted when sent).
HOSTILE_PATH_SEGMENTS = [
    *[h for h in HOSTILE_HOST_IDS if h and "/" not in h and h not in {".", ".."}],
    "%2F",
    "%252e%252e",
    "..%2F..%2Fetc",
    "a%00b",
    "h1;x=1",
    "h1?x=1",
    "h1#frag",
]

# Job ids that fail ^[A-Za-z0-9_-]{1,128}$.
HOSTILE_JOB_IDS = [
    "a;b",
    "$(id)",
    "j" * 129,
    "job.1",
    "job 1",
    "job\n",
    "rq:job:x",
    "*",
    "é",
    "j\x00",
]

# Authorization header values that must all be refused (401) for both the webhook and admin writes.
# (Header values travel as latin-1; nothing outside U+0000-U+00FF can reach the app.)
HOSTILE_AUTHORIZATION_VALUES = [
    "",
    "Bearer",
    "Bearer ",
    "bearer",
    "Basic",
    "Basic ",
    "Basic !!!notbase64",
    "Basic Og==",  # ":" — empty user, empty password
    "Basic YQ==",  # "a" — no colon at all
    "Basic /w==",  # a lone 0xff byte: not UTF-8
    "Token whk-7f3a9c1e5b2d4f60-secret",
    "Bearer whk-7f3a9c1e5b2d4f60-secre",  # one character short
    "Bearer whk-7f3a9c1e5b2d4f60-secretX",  # one character long
    "Bearer WHK-7F3A9C1E5B2D4F60-SECRET",
    "Bearer adm-91c2e8f4a7b3d650-secret\x00",
    "Bearer \xff\xfe",
    "Bearer " + "A" * 8000,
    "Bearer\twhk-7f3a9c1e5b2d4f60-secret-not",
    "Digest username=x",
    "Negotiate YII=",
]

# Content-Type values the webhook must answer 415 for.
HOSTILE_CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json-patch",
    "text/json",
    "json",
    "application/",
    "/json",
    "*/*",
    "application/xml",
    "",
]
