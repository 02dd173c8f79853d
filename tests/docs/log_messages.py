#!/usr/bin/env python3
"""Every warning and error kvsd can log has its entry in the operations
guide: the stable text of each KVS_LOG_ERROR / KVS_LOG_WARN format in
daemon/ (each literal stretch between conversions, of 12 characters or
more) must appear in docs/operations.md, "Messages in the log".

Usage: log_messages.py SOURCE_DIR   (exit 1 naming what is missing)"""
import pathlib
import re
import sys

CALL = re.compile(r'KVS_LOG_(ERROR|WARN)\s*\(')
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
CONVERSION = re.compile(r'%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L)?[diouxXeEfgGcspn%]')
MIN_FRAGMENT = 12


def formats(text):
    """The format argument of each call: its adjacent string literals
    joined, a macro between them (PRIu64) standing for a conversion."""
    for m in CALL.finditer(text):
        i, parts = m.end(), []
        while True:
            while i < len(text) and text[i] in ' \t\n':
                i += 1
            s = STRING.match(text, i)
            if s:
                parts.append(s.group(1))
                i = s.end()
                continue
            macro = re.match(r'PRI[a-zA-Z0-9]+', text[i:])
            if macro and parts:
                parts.append('%d')
                i += macro.end()
                continue
            break
        if parts:
            yield m.group(1), ''.join(parts)


def fragments(fmt):
    fmt = fmt.replace('\\"', '"').replace('\\n', '')
    for piece in CONVERSION.split(fmt):
        piece = piece.strip(' :;,.()')
        if len(piece) >= MIN_FRAGMENT:
            yield piece


def main():
    root = pathlib.Path(sys.argv[1])
    guide = (root / 'docs' / 'operations.md').read_text()
    section = guide.split('## Messages in the log', 1)
    if len(section) < 2:
        print('docs/operations.md has no section "## Messages in the log"')
        return 1
    # Markdown wraps lines: compare with runs of white space as one space.
    entries = ' '.join(section[1].split('\n## ', 1)[0].split())
    missing, checked = [], 0
    for path in sorted((root / 'daemon').rglob('*.[ch]pp')):
        for level, fmt in formats(path.read_text()):
            for frag in fragments(fmt):
                frag = ' '.join(frag.split())
                checked += 1
                if frag not in entries:
                    missing.append(f'{path.relative_to(root)}: {level}: "{frag}"')
    for m in missing:
        print('not in docs/operations.md, "Messages in the log":', m)
    print(f'{checked} stable texts of kvsd\'s warnings and errors checked, {len(missing)} missing')
    return 1 if missing else 0


if __name__ == '__main__':
    sys.exit(main())
