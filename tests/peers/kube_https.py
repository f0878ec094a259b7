"""An HTTPS Kubernetes API fixture for the kubernetes filter's TLS and token handling.
  python kube_https.py PORT CERT KEY DATA_DIR
Serves GET /api/v1/namespaces/<ns>/pods/<pod> from DATA_DIR/pods/<ns>_<pod>.json and
GET /api/v1/namespaces/<ns> from DATA_DIR/namespaces/<ns>.json and the kubelet's GET /pods from
DATA_DIR/kubelet-pods.json, only to requests whose
`Authorization` is `Bearer <contents of DATA_DIR/token>` (read per request, so a test can rotate
it); 401 otherwise. Every request is appended to DATA_DIR/requests.log as "<status> <path>".
"""
import http.server
import os
import ssl
import sys

PORT, CERT, KEY, DATA = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, status, body):
        with open(os.path.join(DATA, "requests.log"), "a") as log:
            log.write(f"{status} {self.path}\n")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with open(os.path.join(DATA, "token")) as f:
            expected = "Bearer " + f.read().strip()
        if self.headers.get("Authorization") != expected:
            return self.answer(401, b'{"kind":"Status","code":401,"message":"Unauthorized"}')
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "pods":
            path = os.path.join(DATA, "pods", f"{parts[3]}_{parts[5]}.json")
        elif parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4:
            path = os.path.join(DATA, "namespaces", f"{parts[3]}.json")
        elif parts == ["pods"]:
            path = os.path.join(DATA, "kubelet-pods.json")
        else:
            path = None
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                return self.answer(200, f.read())
        self.answer(404, b'{"kind":"Status","code":404,"message":"not found"}')

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
