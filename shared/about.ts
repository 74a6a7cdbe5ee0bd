import pkg from '../package.json';

export const VERSION: string = pkg.version;
export const ABOUT_CALICO = `Calico CNI plugin (calico-ts) ${VERSION}`;
export const ABOUT_IPAM = `Calico CNI IPAM plugin (calico-ts) ${VERSION}`;
