"""An app on the official `openai` client, monitored through `atalaia gateway`: only the base URL changes.

Environment: OPENAI_API_KEY as usual (the gateway forwards it untouched); ATALAIA_GATEWAY_URL, e.g.
http://127.0.0.1:8400/openai (the gateway's address and the upstream's name in ATALAIA_GATEWAY_UPSTREAMS).
"""

import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["ATALAIA_GATEWAY_URL"])
model = os.environ.get("MODEL", "gpt-4o-mini")
answer = client.chat.completions.create(
    model=model, max_tokens=16, messages=[{"role": "user", "content": "How many vacation days do I get?"}]
)
print(answer.choices[0].message.content)
stream = client.chat.completions.create(
    model=model, max_tokens=16, stream=True, messages=[{"role": "user", "content": "Who approves travel?"}]
)
print("".join(chunk.choices[0].delta.content or "" for chunk in stream))
