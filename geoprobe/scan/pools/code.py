"""The ``code`` pool: Python, JavaScript, C, Java and SQL fragments, written for geoprobe.

How it is made: 26 templates (13 written to end on a determined next token, e.g. ``import numpy as`` or
``if __name__ ==``; 13 written to end where many continuations fit, e.g. a function signature followed by a
newline and indentation) filled from the slot vocabularies below (function, variable, class and file names
invented for this pool) by the seeded sampler of :mod:`geoprobe.scan.pools.base`. Nothing is copied from any
dataset; the capacity is several thousand distinct texts.
"""

from __future__ import annotations

from geoprobe.scan.pools.base import Template

FUNCS = ["compute_total", "parse_line", "load_config", "merge_lists", "count_words", "is_prime", "flatten",
         "normalize", "read_rows", "find_max", "update_cache", "send_email", "resize_image", "tokenize",
         "validate_user", "moving_average", "to_celsius", "binary_search", "group_by_key", "retry_request"]
ARGS = ["x", "items", "path", "a, b", "data, key", "values, window", "text", "n", "user, password",
        "url, timeout=10", "lst", "config, verbose=False"]
VARS = ["total", "result", "count", "names", "scores", "rows", "buffer", "queue", "matrix", "prices", "words",
        "index", "offset", "users"]
CLASSES = ["Stack", "Queue", "Parser", "Account", "Vector", "Node", "Matrix", "Inventory", "Timer", "Cache",
           "Logger", "Graph"]
FILES = ["data.txt", "config.json", "users.csv", "notes.md", "log.txt", "input.dat", "report.csv"]
COMMENTS = ["Compute the running total", "Read the input file", "TODO: handle empty input",
            "Sort the scores in descending order", "Check whether the user exists", "Helper functions",
            "Main loop", "Parse command line arguments", "Remove duplicates", "Build the lookup table"]
MODULES = ["os", "sys", "json", "math", "re", "time", "random", "itertools", "functools", "csv"]
TABLES = ["users", "orders", "products", "employees", "books", "payments"]
VOCAB = {"func": FUNCS, "args": ARGS, "var": VARS, "cls": CLASSES, "file": FILES, "comment": COMMENTS,
         "module": MODULES, "table": TABLES, "num": [str(i) for i in range(0, 20)],
         "var2": VARS}

TEMPLATES = [
    # determined endings
    Template("import_np", "determined", "import {module}\nimport numpy as"),
    Template("import_pd", "determined", "import {module}\nimport pandas as"),
    Template("main_guard", "determined", "def main():\n    {var} = {num}\n\n\nif __name__ =="),
    Template("loop_var", "determined", "{var} = [1, 2, 3]\nfor item in"),
    Template("print_sum", "determined", "x = {num}\ny = {num}\nprint(x +"),
    Template("java_main", "determined", "public class {cls} {{\n    public static void main(String[]"),
    Template("c_include", "determined", "#include <stdio.h>\n\nint"),
    Template("with_open", "determined", "with open(\"{file}\") as"),
    Template("self_init", "determined", "class {cls}:\n    def __init__("),
    Template("return_self", "determined", "class {cls}:\n    def __init__(self, {var}):\n        self.{var} ="),
    Template("range_len", "determined", "for i in range(len({var})):\n    {var}[i] ="),
    Template("js_require", "determined", "const {var} = require("),
    Template("elif", "determined", "if {var} > {num}:\n    print(\"big\")\nelif {var} < {num}:\n    print(\"small\")\n"
                                   "else"),
    # open endings
    Template("def_body", "open", "def {func}({args}):\n    "),
    Template("def_doc", "open", "def {func}({args}):\n    \"\"\""),
    Template("comment", "open", "# {comment}\n"),
    Template("sql_where", "open", "SELECT * FROM {table} WHERE"),
    Template("class_body", "open", "class {cls}:\n    \"\"\""),
    Template("append", "open", "{var} = []\nfor {var2} in range({num}):\n    {var}.append("),
    Template("if_cond", "open", "def {func}({args}):\n    if"),
    Template("from_import", "open", "from {module} import"),
    Template("js_function", "open", "function {func}({args}) {{\n  "),
    Template("c_for", "open", "int {func}(int n) {{\n    int {var} = 0;\n    for ("),
    Template("print_fstring", "open", "print(f\"{comment}:"),
    Template("try", "open", "try:\n    {var} = {func}({args})\nexcept"),
    Template("assign", "open", "{var} ="),
]
