"""A real SMTP server for the tests (aiosmtpd): every accepted message is written to
DIR/<n>.json (parsed: recipients, subject, plain and HTML parts, Message-ID) and DIR/<n>.eml.

    python3 smtp_sink.py PORT DIR

Behaviour a test can switch on while it runs:
- a recipient containing "transient-fail" is refused with 451 (try again later);
- a recipient containing "permanent-fail" is refused with 550, quoting the address (as real
  servers often do);
- with SINK_COUNT_ONLY=1 in the environment, messages are only counted (DIR/count), for
  throughput measurements;
- while the file DIR/delay_ms exists, DATA waits that many milliseconds before accepting, and
  DIR/receiving is created when such a slow DATA starts.
"""

import asyncio
import email
import email.policy
import json
import os
import sys
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if "transient-fail" in address:
            return "451 4.3.0 Try again later"
        if "permanent-fail" in address:
            return f"550 5.1.1 <{address}>: No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if os.environ.get("SINK_COUNT_ONLY"):
            with self.lock:
                self.count += 1
                with open(os.path.join(self.directory, "count.tmp"), "w") as f:
                    f.write(str(self.count))
                os.replace(os.path.join(self.directory, "count.tmp"), os.path.join(self.directory, "count"))
            return "250 Message accepted"
        delay_file = os.path.join(self.directory, "delay_ms")
        if os.path.exists(delay_file):
            with open(os.path.join(self.directory, "receiving"), "w") as marker:
                marker.write("1")
            with open(delay_file) as f:
                await asyncio.sleep(int(f.read().strip() or "0") / 1000)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        record = {
            "mail_from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(message["subject"]),
            "message_id": str(message["message-id"]),
            "text": text.get_content() if text else None,
            "html": html.get_content() if html else None,
        }
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.directory, f"{os.getpid()}-{n:05d}")
        with open(base + ".eml", "wb") as f:
            f.write(envelope.content)
        with open(base + ".json.tmp", "w") as f:
            json.dump(record, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 Message accepted"


def main():
    port = int(sys.argv[1])
    directory = sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    controller = Controller(Sink(directory), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
