/** The IPAM consistency checker is product code (calico-ipam check); tests use the same one. */
export { checkIpamInvariants } from '../../shared/ipam/check';
