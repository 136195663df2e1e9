"""Serves OPA's data API (`POST /v1/data/<path>`) for one Heimdall bundle, evaluated by OPA's own
Go engine, so that the proxy's remote-OPA client is tested against real OPA semantics.

Usage: python3 opa_server.py BUNDLE.tar.gz PORT

Needs the `opa_bindings` module of the PyPI wheel `opa-golib-python-bindings` on PYTHONPATH.
Answers like OPA: `{"result": ...}`, or `{}` when the document is undefined.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

from opa_bindings import OpaEngine, OpaUndefinedError

from opa_eval import load_bundle

ENGINE = OpaEngine()
LOCK = Lock()


class DataApi(BaseHTTPRequestHandler):
    def do_POST(self):
        if not self.path.startswith("/v1/data/"):
            self.send_error(404)
            return
        document = self.path[len("/v1/data/"):].split("?")[0].replace("/", ".")
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        try:
            with LOCK:
                result = ENGINE.eval_document(document, body.get("input"))
            answer = {"result": result}
        except OpaUndefinedError:
            answer = {}
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def main():
    load_bundle(ENGINE, sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), DataApi)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
