"""Evaluates a Heimdall bundle with OPA's own Go engine, for the cross-check against regorus.

Usage: python3 opa_eval.py BUNDLE.tar.gz INPUTS.jsonl [TESTS.rego]

Needs the `opa_bindings` module of the PyPI wheel `opa-golib-python-bindings` on PYTHONPATH.
Prints one JSON object per input line: {"decision": ..., "accessible_tenants": [...]}.
With TESTS.rego it first runs every `test_*` rule of that module and exits non-zero on a failure.
"""

import json
import re
import sys
import tarfile

from opa_bindings import OpaEngine, OpaUndefinedError


def load_bundle(engine, path):
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            contents = archive.extractfile(member).read().decode("utf-8")
            name = member.name.lstrip("/")
            if name.endswith(".rego"):
                engine.add_policy(name, contents)
            elif name == "heimdall/state/data.json":
                engine.add_data({"heimdall": {"state": json.loads(contents)}})


def run_rego_tests(engine, path):
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    engine.add_policy("authz_test.rego", source)
    package = re.search(r"^package\s+(\S+)", source, re.MULTILINE).group(1)
    failures = []
    names = re.findall(r"^(test_\w+)", source, re.MULTILINE)
    for name in names:
        try:
            if engine.eval_document(f"{package}.{name}") is not True:
                failures.append(name)
        except OpaUndefinedError:
            failures.append(name)
    if failures or not names:
        print("failing Rego tests under OPA: " + ", ".join(failures), file=sys.stderr)
        sys.exit(1)


def main():
    engine = OpaEngine()
    load_bundle(engine, sys.argv[1])
    if len(sys.argv) > 3:
        run_rego_tests(engine, sys.argv[3])
    with open(sys.argv[2], encoding="utf-8") as inputs:
        for line in inputs:
            request = json.loads(line)
            decision = engine.eval_document("heimdall.authz.decision", request)
            try:
                tenants = engine.eval_document("heimdall.tenants.accessible", request)
            except OpaUndefinedError:
                tenants = []
            print(json.dumps({"decision": decision, "accessible_tenants": sorted(tenants)}))


if __name__ == "__main__":
    main()
