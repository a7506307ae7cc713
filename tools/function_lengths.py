#!/usr/bin/env python3
"""Lists Swift functions, initializers and closures-as-properties whose bodies run over a number of lines.

Usage: tools/function_lengths.py [--max 60] FILE_OR_FOLDER...
Exit 1 when any body is longer than --max lines (the lines between the opening and the closing brace).
A brace-matching scan that skips strings and comments: enough for this codebase's Swift, not a parser.
"""
import argparse
import os
import re
import sys

DECLARATION = re.compile(r"(?<![.\w])(func\s+[^\s(<]+|init[?!]?|deinit|subscript)\s*[(<{]")


def strip_code(text):
    """The text with string literals and comments blanked (kept line structure), so braces count."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith('"""', i):
            j = text.find('"""', i + 3)
            j = n if j < 0 else j + 3
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text[i] == '"':
            j = i + 1
            depth = 0
            while j < n and (text[j] != '"' or depth > 0) and text[j] != "\n":
                if text.startswith("\\(", j):
                    depth += 1
                    j += 2
                    continue
                if depth > 0 and text[j] == ")":
                    depth -= 1
                elif text[j] == "\\":
                    j += 1
                j += 1
            out.append(" " * (j + 1 - i))
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def long_functions(path, limit):
    code = strip_code(open(path, encoding="utf-8").read())
    found = []
    for match in DECLARATION.finditer(code):
        # The body starts at the first "{" after the signature; protocol requirements have none.
        start = code.find("{", match.end() - 1)
        line_end = code.find("\n", match.start())
        signature = code[match.start():start]
        if start < 0 or ("\n}" in signature) or re.search(r"\n\s*(func|var|let|case)\b", signature):
            continue
        depth, k = 0, start
        while k < len(code):
            if code[k] == "{":
                depth += 1
            elif code[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        first = code.count("\n", 0, start) + 1
        last = code.count("\n", 0, k) + 1
        body = last - first - 1
        if body > limit:
            name = match.group(1).replace("func", "").strip()
            found.append((path, first, name, body))
        del line_end
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=60)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    files = []
    for p in args.paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                files += [os.path.join(root, f) for f in sorted(names) if f.endswith(".swift")]
        else:
            files.append(p)
    found = [f for path in sorted(files) for f in long_functions(path, args.max)]
    for path, line, name, body in found:
        print(f"functions: {path}:{line}: {name} has {body} lines (at most {args.max})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
