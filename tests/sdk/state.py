"""Dapr's Python SDK (PyPI `dapr`), unchanged: its gRPC client saves,
reads, deletes and transacts state through the sidecar named by
DAPR_GRPC_PORT / DAPR_HTTP_PORT (and DAPR_API_TOKEN). Run by
tests/tests/dapr_sdks.rs with the venv of scripts/sdks.sh:

    python state.py STORE KEY_PREFIX

Prints one JSON line of what it read back (values as text, a missing key
as null) as its last line; exits 1 with the error on stderr when a call
fails. The client's constructor first waits for the sidecar's
/v1.0/healthz/outbound, as the SDK does.
"""

import json
import sys
import traceback

from dapr.clients import DaprClient
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit('usage: state.py STORE KEY_PREFIX')
    store, prefix = sys.argv[1], sys.argv[2]

    def k(n: str) -> str:
        return f'{prefix}-py-{n}'

    out = {}
    with DaprClient() as d:

        def read(key: str):
            data = d.get_state(store, key).data
            return data.decode() if data else None

        d.save_state(store, k('k1'), 'v1')
        d.save_state(store, k('k2'), json.dumps({'n': 2, 'by': 'py'}))
        out['k1'] = read(k('k1'))
        out['k2'] = read(k('k2'))
        d.delete_state(store, k('k1'))
        out['k1_after_delete'] = read(k('k1'))
        d.execute_state_transaction(
            store,
            [
                TransactionalStateOperation(key=k('k3'), data=json.dumps({'tx': 'py'})),
                TransactionalStateOperation(key=k('k2'), operation_type=TransactionOperationType.delete),
            ],
        )
        out['k2_after_tx'] = read(k('k2'))
        out['k3_after_tx'] = read(k('k3'))
    print(json.dumps(out), flush=True)


if __name__ == '__main__':
    try:
        main()
    except Exception:
        sys.stderr.write('state.py: ' + traceback.format_exc())
        sys.exit(1)
