"""A cryptoassets.core HTTP event listener, for tests/peer_formats.rs.

Follows cryptoassets.core's own `CryptoassetsServiceRequestHandler` (its
`simple_http_event_listener`): read Content-Length bytes, `parse_qs` them, require the
`data` field, take `event_name[0]` and `json.loads(data[0])`, hand both to the callback,
answer 200 — any exception answers 500. The callback here prints one JSON line per event
(`{"event_name": …, "data": …, "xdata": …}`) to stdout. The first line printed is the port.
Standard library only.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs


def callback(event_name, data, xdata):
    print(json.dumps({"event_name": event_name, "data": data, "xdata": xdata}), flush=True)


class CryptoassetsServiceRequestHandler(BaseHTTPRequestHandler):
    def log_request(self, code=None, size=None):
        pass

    def do_POST(self):
        try:
            length = int(self.headers["Content-Length"])
            post_data = parse_qs(self.rfile.read(length).decode("utf-8"))
            if "data" not in post_data:
                raise RuntimeError("Incoming POST did not contain data field: {}".format(post_data))
            event_name = post_data["event_name"][0]
            data = json.loads(post_data["data"][0])
            xdata = json.loads(post_data["xdata"][0]) if "xdata" in post_data else None
            callback(event_name, data, xdata)
            self.send_response(200, "OK")
            self.end_headers()
        except Exception as e:
            print("listener error: {}".format(e), file=sys.stderr, flush=True)
            self.send_response(500, "Internal server error")
            self.end_headers()


if __name__ == "__main__":
    server = HTTPServer(("127.0.0.1", 0), CryptoassetsServiceRequestHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
