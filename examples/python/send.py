"""Submits one message with the installed vmta package and prints each recipient's final outcome.

    pip install ./python
    python3 examples/python/send.py CONFIG.toml SENDER RECIPIENT...
"""

import sys

import vmta


def main() -> int:
    if len(sys.argv) < 4:
        print("usage: send.py CONFIG.toml SENDER RECIPIENT...", file=sys.stderr)
        return 2
    config, sender, rcpts = sys.argv[1], sys.argv[2], sys.argv[3:]
    body = f"From: <{sender}>\r\nTo: <{rcpts[0]}>\r\nSubject: Hello from Python\r\n\r\nHello.\r\n"
    with vmta.Engine(path=config) as engine:
        try:
            message_id = engine.submit(sender, rcpts, body.encode())
        except vmta.Refused as e:
            print(f"refused: {e} (code {e.code})", file=sys.stderr)
            return 1
        left = len(rcpts)
        for event in engine.events(timeout=120):
            if event.message_id == message_id and event.final:
                print(event.kind, f"{message_id:016x}", event.recipient, event.code, event.text)
                left -= 1
                if left == 0:
                    break
        engine.shutdown(5)
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
