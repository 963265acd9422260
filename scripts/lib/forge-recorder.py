"""A recording forge for the demo: accepts commit-status POSTs on loopback,
answers 201, and appends each one as a JSON line to the file given."""
import http.server
import json
import sys

LOG = sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(LOG, "a") as f:
            f.write(json.dumps({"path": self.path, "status": json.loads(body or b"{}")}) + "\n")
        self.send_response(201)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
