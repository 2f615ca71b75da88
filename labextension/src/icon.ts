import { LabIcon } from '@jupyterlab/ui-components';

/**
 * Side-bar icon: a balancer node fanning out to three workers.
 * `jp-icon3` / `jp-icon-selectable` let the theme recolour it.
 */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3 jp-icon-selectable" fill="#616161">
    <circle cx="12" cy="4.5" r="3"/>
    <rect x="1.5" y="17" width="6" height="5" rx="1"/>
    <rect x="9" y="17" width="6" height="5" rx="1"/>
    <rect x="16.5" y="17" width="6" height="5" rx="1"/>
    <path d="M11 7.5h2v4.5h6.5v5h-2V14H13v3h-2v-3H6.5v3h-2v-5H11z"/>
  </g>
</svg>`;

export const plbIcon = new LabIcon({
  name: 'jupyter-plb:balancer',
  svgstr
});
