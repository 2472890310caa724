"""Drives the unmodified Bitcart SDK (PyPI `bitcart` 1.18) against chainledger's
Bitcart-compatible endpoint, for tests/bitcart.rs. Prints one JSON object per line on
stdout: every event a handler receives ({"event", ...its fields, "wallet"}), and
{"connected": true} each time a websocket is (re)established.

  sdk_client.py URL USER PASSWORD MODE [XPUB]

MODE: poll (BTC.poll_updates), ws (BTC.start_websocket), manager-ws (APIManager, which
sends no xpub and routes frames by their wallet), once (one get_updates call through the
SDK; prints {"result": [...]} or {"error": exception class name, "message": ...}).
Run with .local/bitcart-venv/bin/python (tools/install-deps creates it).
"""

import asyncio
import json
import logging
import sys

from bitcart import BTC, APIManager

EVENTS = ["new_block", "new_transaction", "verified_tx", "new_payment"]


def emit(**fields):
    print(json.dumps(fields), flush=True)


def handler_for(wallet_of):
    # The SDK passes a handler only the fields it names, so every field is named here.
    def handle(*args, height=None, tx=None, address=None, status=None, status_str=None,
               tx_hashes=None, sent_amount=None):
        *instance, event = args
        fields = dict(height=height, tx=tx, address=address, status=status,
                      status_str=status_str, tx_hashes=tx_hashes, sent_amount=sent_amount)
        emit(event=event, wallet=wallet_of(instance),
             **{k: v for k, v in fields.items() if v is not None})

    return handle


async def connected(*_currency):
    emit(connected=True)


async def main(url, user, password, mode, xpub):
    if mode == "manager-ws":
        manager = APIManager({"BTC": [xpub] if xpub else []},
                             custom_params={"BTC": {"rpc_url": url, "rpc_user": user,
                                                    "rpc_pass": password}})
        manager.add_event_handler(EVENTS, handler_for(lambda inst: inst[0].xpub))
        await manager.start_websocket(reconnect_callback=connected, force_connect=True)
        return
    btc = BTC(rpc_url=url, rpc_user=user, rpc_pass=password, xpub=xpub)
    btc.add_event_handler(EVENTS, handler_for(lambda _inst: xpub))
    if mode == "poll":
        await btc.poll_updates(interval=0.2)
    elif mode == "ws":
        await btc.start_websocket(reconnect_callback=connected, force_connect=True)
    elif mode == "once":
        try:
            emit(result=await btc.server.get_updates())
        except Exception as e:  # the class the SDK built from /spec is what we test
            emit(error=type(e).__name__, message=str(e))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    url, user, password, mode = sys.argv[1:5]
    asyncio.run(main(url, user, password, mode, sys.argv[5] if len(sys.argv) > 5 else None))
