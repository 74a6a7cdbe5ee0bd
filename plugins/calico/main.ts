import { runPlugin, type PluginSpec } from '../../shared/cni/skel';
import { ABOUT_CALICO } from '../../shared/about';

const spec: PluginSpec = {
  name: 'calico',
  about: ABOUT_CALICO,
  load: async () => (await import(/* webpackMode: "eager" */ './plugin')).calicoPlugin,
  cli: async (argv) => (await import(/* webpackMode: "eager" */ './agent-cli')).main(argv, spec),
};

void runPlugin(spec);
