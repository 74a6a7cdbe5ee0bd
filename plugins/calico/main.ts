import { runPlugin } from '../../shared/cni/skel';
import { ABOUT_CALICO } from '../../shared/about';

void runPlugin({
  name: 'calico',
  about: ABOUT_CALICO,
  load: async () => (await import(/* webpackMode: "eager" */ './plugin')).calicoPlugin,
});
