// Stylesheets are imported for esbuild, which bundles them beside each page's script.
declare module "*.css";
