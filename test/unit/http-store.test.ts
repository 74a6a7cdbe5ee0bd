import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { closeSharedConnections, HttpEtcdStore, keepConnectionsAcrossCalls } from '../../shared/etcd/http-store';

/*
 * The JSON-gateway store's connections, against a stand-in gateway that counts them: one set per store
 * in a plugin process, kept across stores in the node agent, and a kept one that etcd closed meanwhile is
 * replaced rather than failing the call.
 */

interface Gateway {
  endpoint: string;
  connections: () => number;
  /** The next request that arrives on an already used connection is cut off, unanswered. */
  resetNextReused: () => void;
  close: () => Promise<void>;
}

async function gateway(): Promise<Gateway> {
  let connections = 0;
  let resetReused = false;
  const used = new WeakSet<Socket>();
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const socket = req.socket;
    if (resetReused && used.has(socket)) {
      resetReused = false;
      socket.resetAndDestroy();
      return;
    }
    used.add(socket);
    req.resume();
    req.on('end', () => res.end(JSON.stringify({ header: { revision: '7' }, responses: [] })));
  });
  server.on('connection', (s: Socket) => {
    connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: () => connections,
    resetNextReused: () => (resetReused = true),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** One call's use of the store, as calico makes it: open, a read and a transaction, close. */
async function call(endpoint: string): Promise<void> {
  const store = new HttpEtcdStore({ endpoints: [endpoint], transport: 'http', requestTimeoutMs: 5000 });
  await store.read([{ key: '/calico/x' }]);
  expect((await store.txn([], [{ op: 'put', key: '/calico/x', value: 'v' }])).revision).toBe(7);
  await store.close();
}

afterEach(() => closeSharedConnections());

/** Runs `fn` against a fresh stand-in gateway, closed afterwards whatever happens. */
async function withGateway(fn: (gw: Gateway) => Promise<void>): Promise<void> {
  const gw = await gateway();
  try {
    await fn(gw);
  } finally {
    await gw.close();
  }
}

describe('the JSON-gateway store', () => {
  it('in a plugin process, each store opens its own connection and closes it', () =>
    withGateway(async (gw) => {
      await call(gw.endpoint);
      await call(gw.endpoint);
      expect(gw.connections()).toBe(2);
    }));

  it('in the agent, calls share one kept connection', () => {
    keepConnectionsAcrossCalls();
    return withGateway(async (gw) => {
      for (let i = 0; i < 3; i++) await call(gw.endpoint);
      expect(gw.connections()).toBe(1);
    });
  });

  it('a kept connection etcd cut meanwhile is replaced: the call succeeds on a new one', () => {
    keepConnectionsAcrossCalls();
    return withGateway(async (gw) => {
      await call(gw.endpoint);
      gw.resetNextReused();
      await call(gw.endpoint);
      expect(gw.connections()).toBe(2);
    });
  });
});
