import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { PluginImpl } from '../../shared/cni/skel';

const todo = async (): Promise<never> => {
  throw new CniError(ErrorCode.Internal, 'not implemented yet');
};
export const calicoPlugin: PluginImpl = { add: todo, del: todo, check: todo, status: todo, gc: todo };
