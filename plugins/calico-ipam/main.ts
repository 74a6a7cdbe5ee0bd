import { runPlugin } from '../../shared/cni/skel';
import { ABOUT_IPAM } from '../../shared/about';

void runPlugin({
  name: 'calico-ipam',
  about: ABOUT_IPAM,
  load: async () => (await import(/* webpackMode: "eager" */ './plugin')).ipamPlugin,
  cli: async (argv) => (await import(/* webpackMode: "eager" */ './cli')).main(argv),
});
