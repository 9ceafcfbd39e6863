"""An app on the official `anthropic` client, monitored through `atalaia gateway`: only the base URL changes.

Environment: ANTHROPIC_API_KEY as usual (the gateway forwards it untouched); ATALAIA_GATEWAY_URL, e.g.
http://127.0.0.1:8400/claude (the gateway's address and the upstream's name in ATALAIA_GATEWAY_UPSTREAMS).
"""

import os

from anthropic import Anthropic

client = Anthropic(base_url=os.environ["ATALAIA_GATEWAY_URL"])
model = os.environ.get("MODEL", "claude-haiku-4-5")
message = client.messages.create(
    model=model, max_tokens=64, messages=[{"role": "user", "content": "How many vacation days do I get?"}]
)
print(message.content[0].text)
with client.messages.stream(
    model=model, max_tokens=64, messages=[{"role": "user", "content": "Who approves travel?"}]
) as stream:
    print("".join(stream.text_stream))
