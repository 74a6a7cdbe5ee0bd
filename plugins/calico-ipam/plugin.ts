import { validAttachments } from '../../shared/cni/config';
import type { Context, PluginImpl } from '../../shared/cni/skel';
import { determineNodename, validateNodename } from '../../shared/calico/nodename';
import { openStore } from '../../shared/etcd/connect';
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus, type IpamCall } from '../../shared/ipam/cni-ipam';

/** Opens etcd for one call and always closes it, so the process can exit. */
async function withIpam<T>(ctx: Context, fn: (call: IpamCall) => Promise<T>): Promise<T> {
  const node = validateNodename(determineNodename(ctx.conf));
  const store = await openStore(ctx.conf, ctx.env.vars);
  try {
    return await fn({ env: ctx.env, conf: ctx.conf, version: ctx.version, log: ctx.log, store, node });
  } finally {
    await store.close();
  }
}

export const ipamPlugin: PluginImpl = {
  add: (ctx) => withIpam(ctx, ipamAdd),
  del: async (ctx) => {
    await withIpam(ctx, ipamDel);
  },
  check: (ctx) => withIpam(ctx, ipamCheck),
  status: (ctx) => withIpam(ctx, ipamStatus),
  gc: async (ctx) => {
    await withIpam(ctx, (call) => ipamGc(call, validAttachments(ctx.conf)));
  },
};
