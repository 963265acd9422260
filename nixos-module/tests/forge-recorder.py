"""A stand-in forge for the VM test: answers Gitea/Forgejo commit-status POSTs
(`/api/v1/repos/OWNER/REPO/statuses/SHA`) and records each one, so the test
script can wait for what the agent reported.

Usage: forge-recorder.py PORT DIR TOKEN [CERT KEY]

With CERT and KEY (PEM files), it answers over HTTPS.

DIR/statuses.log gets one line per accepted status, easy to grep:
    <sha> <state> <context>
DIR/requests.jsonl gets every request as JSON (path, authorised, body), for
reading when something goes wrong. A request without `Authorization: token
TOKEN` is answered 401 and only logged to requests.jsonl.
"""
import http.server
import json
import os
import re
import sys

PORT = int(sys.argv[1])
DIR = sys.argv[2]
TOKEN = sys.argv[3]
TLS = sys.argv[4:6]
PATH = re.compile(r"^/api/v1/repos/[^/]+/[^/]+/statuses/([0-9a-f]{40})$")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        authorised = self.headers.get("Authorization") == f"token {TOKEN}"
        try:
            status = json.loads(body or b"{}")
        except ValueError:
            status = None
        with open(os.path.join(DIR, "requests.jsonl"), "a") as f:
            f.write(
                json.dumps({"path": self.path, "authorised": authorised, "body": status})
                + "\n"
            )
        match = PATH.match(self.path)
        if not authorised:
            return self.answer(401, {"message": "token is required"})
        if match is None or not isinstance(status, dict) or "state" not in status:
            return self.answer(404, {"message": "not a commit status request"})
        with open(os.path.join(DIR, "statuses.log"), "a") as f:
            f.write(f"{match.group(1)} {status['state']} {status.get('context', '')}\n")
        self.answer(201, {"id": 1, **status})

    def answer(self, code, value):
        data = json.dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


os.makedirs(DIR, exist_ok=True)
server = http.server.HTTPServer(("0.0.0.0", PORT), Handler)
if TLS:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS[0], TLS[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
