/**
 * The task detail dialog of the panel: `GET plb/api/tasks/<id>` in a JupyterLab dialog,
 * refreshed while the task is queued or running. Server text goes in with `textContent` only.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { requestAPI } from './api';
import {
  ITaskDetail,
  TASK_STATES,
  taskDetailModel,
  taskDetailPath
} from './taskdetail';
import { el } from './dom';

const REFRESH_MS = 2000;
const STATE_MODS = [...TASK_STATES, 'other'].map(s => `jp-plb-mod-${s}`);


/** The dialog's body; `data-state` and `data-task-id` on its node are hooks for browser tests. */
class TaskDetailBody extends Widget {
  constructor(id: string) {
    super();
    this.addClass('jp-plb-task-detail');
    this.node.dataset.taskId = id;
    const head = el('div', 'jp-plb-task-detail-head');
    this._name = el('span', 'jp-plb-task-detail-name jp-plb-ellipsis');
    this._state = el('span', 'jp-plb-badge jp-plb-task-state');
    head.append(this._name, this._state);
    this._status = el('div', 'jp-plb-muted jp-plb-small', 'Loading…');
    this._fields = el('dl', 'jp-plb-task-fields');
    this._blocks = el('div', 'jp-plb-task-blocks');
    this.node.append(head, this._status, this._fields, this._blocks);
  }

  render(detail: ITaskDetail): void {
    this.node.dataset.state = detail.state;
    this._name.textContent = detail.name;
    this._name.title = detail.name;
    this._state.textContent = detail.state;
    for (const mod of STATE_MODS) {
      this._state.classList.toggle(mod, mod === detail.stateClass);
    }
    this._status.textContent = detail.live ? 'Live: refreshed every 2 s' : '';
    this._fields.replaceChildren();
    for (const field of detail.fields) {
      const dd = el('dd', '', field.value);
      dd.dataset.field = field.key;
      this._fields.append(el('dt', '', field.label), dd);
    }
    this._blocks.replaceChildren();
    for (const block of detail.blocks) {
      const section = el('section', `jp-plb-task-block jp-plb-task-block-${block.key}`);
      section.dataset.field = block.key;
      section.append(el('h4', '', block.label), el('pre', '', block.text));
      this._blocks.append(section);
    }
  }

  setStatus(text: string): void {
    this._status.textContent = text;
  }

  private _name: HTMLElement;
  private _state: HTMLElement;
  private _status: HTMLElement;
  private _fields: HTMLElement;
  private _blocks: HTMLElement;
}

/** Show task `id`'s detail until the user closes the dialog. */
export async function showTaskDetail(
  settings: ServerConnection.ISettings,
  id: string
): Promise<void> {
  const body = new TaskDetailBody(id);
  let open = true;
  let timer: number | undefined;
  const load = async (): Promise<void> => {
    try {
      const detail = taskDetailModel(
        await requestAPI<unknown>(settings, taskDetailPath(id))
      );
      if (!open) {
        return;
      }
      body.render(detail);
      if (detail.live) {
        timer = window.setTimeout(() => void load(), REFRESH_MS);
      }
    } catch (error) {
      if (open) {
        const message = error instanceof Error ? error.message : String(error);
        body.setStatus(`Cannot load task ${id}: ${message}`);
      }
    }
  };
  void load();
  try {
    await showDialog({
      title: `Task ${id}`,
      body,
      buttons: [Dialog.okButton({ label: 'Close' })]
    });
  } finally {
    open = false;
    window.clearTimeout(timer);
  }
}
